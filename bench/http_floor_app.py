"""A second floor for latency.py: functions-framework around the same transaction, nothing else.

No signature check, no logging, no status mapping: the distance from this to `main.py` is what our
own request handling costs; the distance from the direct floor to this is the HTTP stack's.
"""

from __future__ import annotations

from typing import Any

import functions_framework
import harness

from clerk_sync import events, transaction


@functions_framework.http
def transaction_only(request: Any) -> tuple[str, int]:
    """Parse and apply, as the function does after verifying."""
    event = events.parse_event(request.get_data())
    assert not isinstance(event, events.IgnoredEvent)
    return harness.apply(transaction.client(), request.headers["svix-id"], event), 200

"""One structured JSON line per request, in the shape Cloud Logging parses from stdout."""

from __future__ import annotations

import json
import re
import sys
import threading
from typing import Any

from clerk_sync.signature import HeaderLookup

__all__ = ["trace_field", "write_line"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/\d+)?(?:;o=\d)?")
_lock = threading.Lock()


def trace_field(headers: HeaderLookup, project_id: str | None) -> dict[str, str]:
    """Cloud Logging's trace correlation field, from `traceparent` or `X-Cloud-Trace-Context`."""
    if not project_id:
        return {}
    match = _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip())
    if match is None:
        match = _CLOUD_TRACE.fullmatch((headers.get("X-Cloud-Trace-Context") or "").strip())
    if match is None:
        return {}
    return {"logging.googleapis.com/trace": f"projects/{project_id}/traces/{match.group(1).lower()}"}


def write_line(severity: str, message: str, **fields: Any) -> None:
    """Write one log entry; callers pass ids and outcomes only, never payload data."""
    entry = {"severity": severity, "message": message, **fields}
    # ASCII escapes: an event type may hold a lone surrogate (`\ud800`), which stdout cannot encode.
    line = json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":"))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

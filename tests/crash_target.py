"""A functions-framework target that dies like a killed instance: after its reads, before its commit.

tests/test_faults.py serves this file (`--source tests/crash_target.py --target clerk_webhook`,
PYTHONPATH at the repository root) to show that a crash between verification and commit writes
nothing. Firestore and the request path are the real ones; only the process's death is staged.
"""

from __future__ import annotations

import os
from pathlib import Path

import main
from clerk_sync import transaction

CRASH_MARKER = Path(os.environ["CRASH_MARKER"])


def _die_before_commit(attempt: transaction.Attempt) -> None:
    """Leave proof of how far the request got, then vanish: no answer, no rollback, no commit."""
    CRASH_MARKER.write_text(f"{attempt.write_count} writes prepared, none sent\n")
    os._exit(70)


transaction.Attempt.commit = _die_before_commit  # type: ignore[method-assign,assignment]
clerk_webhook = main.clerk_webhook

"""One structured JSON line per request, in the shape Cloud Logging parses from stdout.

Lines carry ids, event types, outcomes and timings only: never payloads, emails, phone numbers,
metadata, tokens or secrets.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO

from clerk_sync.signature import HeaderLookup

__all__ = ["trace_field", "write_line", "write_traceback"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/\d+)?(?:;o=\d)?")
ERROR_REPORT_TYPE = "type.googleapis.com/google.devtools.clouderrorreporting.v1beta1.ReportedErrorEvent"
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


def _write(stream: TextIO, entry: dict[str, Any]) -> None:
    # ASCII escapes: an event type may hold a lone surrogate (`\ud800`), which stdout cannot encode.
    line = json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":"))
    with _lock:
        stream.write(line + "\n")
        stream.flush()


def write_line(severity: str, message: str, **fields: Any) -> None:
    """Write one log entry to stdout; callers pass ids and outcomes only, never payload data."""
    _write(sys.stdout, {"severity": severity, "message": message, **fields})


def write_traceback(error: BaseException, tb: TracebackType | None, **fields: Any) -> None:
    """A bug's stack on stderr, for Error Reporting: frames and the exception's type, never its message.

    An exception's message can quote the payload (`KeyError('alice@example.com')`), so it is left out.
    """
    frames = "".join(traceback.format_list(traceback.extract_tb(tb)))
    stack = f"Traceback (most recent call last):\n{frames}{type(error).__module__}.{type(error).__qualname__}"
    _write(sys.stderr, {"severity": "ERROR", "message": stack, "@type": ERROR_REPORT_TYPE, **fields})

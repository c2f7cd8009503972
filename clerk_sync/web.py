"""What every HTTP entry point shares: a bounded body, answers that never make the framework read
the rest of it, no exception ever reaching the framework, and one log line per request."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flask
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from clerk_sync import logs

__all__ = ["BodyRefused", "Reply", "read_body", "serve"]

_BODY_READ = "clerk_sync.body_read"


@dataclass
class Reply:
    """An answer: its status, short JSON body, outcome and log message (never payload data)."""

    status: int
    outcome: str
    message: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    severity: str | None = None


class BodyRefused(Exception):
    """The body is too large or never arrived whole."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.message)
        self.reply = reply


def read_body(request: flask.Request, limit: int) -> bytes:
    """At most `limit` bytes, or BodyRefused: a large Content-Length is refused before reading.

    Werkzeug cuts a chunked body at `max_content_length` silently, so that is one byte more than
    allowed and an over-long read means too large.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)  # ours alone, so it can be freed once parsed
    except RequestEntityTooLarge:
        raise BodyRefused(Reply(413, "too_large", f"body over {limit} bytes refused")) from None
    except BadRequest:
        # Fewer bytes than Content-Length said, then the client went away: its problem, not a bug.
        raise BodyRefused(Reply(400, "incomplete_body", "the client sent less than its Content-Length")) from None
    if len(body) > limit:
        raise BodyRefused(Reply(413, "too_large", f"body over {limit} bytes refused"))
    if request.content_length is not None and len(body) < request.content_length:
        # gunicorn hands over what arrived before the client went away, without an error.
        raise BodyRefused(Reply(400, "incomplete_body", "the client sent less than its Content-Length"))
    request.environ[_BODY_READ] = True
    return body


def _response(reply: Reply, request: flask.Request) -> flask.Response:
    """A streamed answer: functions-framework reads any unread body after a non-streamed one."""
    body = reply.body if reply.body is not None else {"outcome": reply.outcome}
    text = "" if reply.status == 204 else flask.json.dumps(body) + "\n"
    headers = {**reply.headers, "Content-Length": str(len(text.encode()))}
    if not request.environ.get(_BODY_READ):
        # The body (of any size) was not read: ask to close rather than drain it. gunicorn decides
        # itself (it drains at most 64 KiB within a deadline, then closes); other servers listen.
        headers["Connection"] = "close"
    return flask.Response(iter([text]), status=reply.status, mimetype="application/json", headers=headers)


def serve(
    request: flask.Request,
    handler: Callable[[flask.Request, dict[str, Any]], Reply],
    *,
    component: str,
    fields: dict[str, Any],
    body_limit: int,
    project: Callable[[], str | None],
    error_body: dict[str, Any] | None = None,
) -> flask.Response:
    """Run `handler`, log one line, answer; an exception becomes a generic 500 and a traceback on stderr."""
    started = time.perf_counter()
    request.max_content_length = body_limit + 1  # before anything could read the body
    fields = {"component": component, **fields}
    try:
        reply = handler(request, fields)
    except Exception as error:  # the framework would echo the exception text to the caller
        logs.write_traceback(error, error.__traceback__, **fields)
        reply = Reply(500, "error", f"unexpected {type(error).__name__}; traceback on stderr", body=error_body)
    fields.update(outcome=reply.outcome, status=reply.status)
    fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    severity = reply.severity or ("INFO" if reply.status < 400 else "WARNING" if reply.status < 500 else "ERROR")
    try:
        trace = logs.trace_field(request.headers, project())
    except Exception:
        trace = {}
    try:
        logs.write_line(severity, reply.message, **fields, **trace)
    except Exception as error:
        print(f"log line lost: {type(error).__name__}", file=sys.stderr)
    return _response(reply, request)

"""Cloud Function entry point: HTTP in, status out; the work lives in `clerk_sync`."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import flask
import functions_framework
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

if not os.environ.get("K_SERVICE"):
    # Local runs only: on Cloud Run the secret comes from Secret Manager, never from a file.
    from dotenv import load_dotenv

    load_dotenv(Path(__file__).with_name(".env"), override=False)

from clerk_sync import config, events, logs, signature, store

MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_STATUS = {"bad_signature": 401}


@functions_framework.http
def clerk_webhook(request: flask.Request) -> ResponseReturnValue:
    """Verify, apply and answer one Svix delivery; never lets an exception reach the framework."""
    started = time.perf_counter()
    # Every line has the same keys (null until known), so log queries and metrics need no guessing.
    fields: dict[str, Any] = {"svix_id": None, "event_type": None, "clerk_id": None}
    try:
        status, outcome, message = _handle(request, fields)
    except Exception as error:  # the framework would echo the exception text to the caller
        status, outcome, message = 500, "error", f"unexpected {type(error).__name__}"
    fields.update(outcome=outcome, status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1))
    severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
    logs.write_line(severity, message, **fields, **logs.trace_field(request.headers, _trace_project()))
    return _response(status, outcome)


def _handle(request: flask.Request, fields: dict[str, Any]) -> tuple[int, str, str]:
    """The request's status, outcome and log message; `fields` collects the ids to log."""
    settings = config.settings()
    if settings.signing_secret is None:
        return 500, "misconfigured", "set CLERK_WEBHOOK_SIGNING_SECRET to the endpoint's whsec_ signing secret"
    if request.method != "POST":
        return 405, "method_not_allowed", f"{request.method} is not allowed, Svix posts"
    # Werkzeug refuses a large Content-Length up front and cuts a chunked body at the limit
    # (silently), so the limit is one byte more than allowed and an over-long read means too large.
    request.max_content_length = MAX_BODY_BYTES + 1
    try:
        body = request.get_data()
    except RequestEntityTooLarge:
        return 413, "too_large", "body over 1 MiB refused"
    if len(body) > MAX_BODY_BYTES:
        return 413, "too_large", "body over 1 MiB refused"
    try:
        webhook = _verifier(settings.signing_secret)
    except ValueError:
        return 500, "misconfigured", f"{settings.secret_variable} is not a valid whsec_ signing secret"
    try:
        signed = signature.verify(webhook, body, request.headers)
    except signature.SignatureRejected as rejected:
        fields["reason"] = rejected.reason
        return SIGNATURE_STATUS.get(rejected.reason, 400), "rejected", f"signature rejected: {rejected.reason}"
    fields["svix_id"] = signed.message_id
    try:
        event = events.parse_event(body)
    except events.MalformedEvent as malformed:
        fields["reason"] = str(malformed)
        return 400, "malformed", f"malformed event: {malformed}"
    fields.update(event_type=event.event_type, clerk_id=event.user_id)
    if isinstance(event, events.IgnoredEvent):
        return 200, "ignored", f"{event.event_type} ignored"
    try:
        outcome = store.apply_event(
            store.client(settings.project_id, settings.database),
            signed.message_id,
            event,
            deadline_seconds=settings.firestore_deadline_seconds,
            event_ttl=settings.event_ttl,
        )
    except store.StoreUnavailable as unavailable:
        fields["reason"] = str(unavailable)
        return 503, "unavailable", f"{event.event_type} not stored: Firestore unavailable"
    if outcome is store.Outcome.CONFLICT:
        return 409, str(outcome), f"{event.event_type} waits: primary email still owned by another user"
    return 200, str(outcome), f"{event.event_type} {outcome}"


def _response(status: int, outcome: str) -> flask.Response:
    """A short JSON answer; a 413 is streamed so the framework does not read the rest of the body."""
    body = flask.json.dumps({"outcome": outcome}) + "\n"
    if status == 413:
        # functions-framework reads any unread body after non-streamed responses.
        return flask.Response(iter([body]), status=status, mimetype="application/json", headers={"Connection": "close"})
    headers = {"Allow": "POST"} if status == 405 else {}
    return flask.Response(body, status=status, mimetype="application/json", headers=headers)


def _trace_project() -> str | None:
    try:
        return config.settings().project_id
    except ValueError:  # unreadable settings were already answered with a 500
        return None


@functools.cache
def _verifier(secret: str) -> signature.Webhook:
    """One verifier per secret: decoding the secret once per instance, not per request."""
    return signature.verifier(secret)

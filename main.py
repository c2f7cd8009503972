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


# --- firebase_token: a Clerk session token in, a Firebase custom token out (its own deployed function;
# docs/reading-from-your-app.md). Self-contained: session_token loads PyJWT and firebase-admin lazily,
# so clerk_webhook above never imports them.

TOKEN_BODY_LIMIT = 1024  # the exchange needs no body; a small one is read so the connection can be reused
TOKEN_STATUS = {"pending_session": 403, "origin_not_allowed": 403, "method_not_allowed": 405}
TOKEN_CORS_MAX_AGE_SECONDS = 600


@functions_framework.http
def firebase_token(request: flask.Request) -> ResponseReturnValue:
    """Exchange a verified Clerk session token for a Firebase custom token; nothing escapes to the framework."""
    # Imported here so this block keeps working whatever the top of main.py imports.
    import time  # noqa: PLC0415

    from clerk_sync import config, logs  # noqa: PLC0415

    started = time.perf_counter()
    fields: dict[str, Any] = {"component": "token", "clerk_id": None, "org_id": None}
    request.max_content_length = TOKEN_BODY_LIMIT + 1  # before anything could read the body
    body_read, origin_allowed, headers = False, False, {"Vary": "Origin", "Cache-Control": "no-store"}
    try:
        body_read = _token_read_small_body(request)
        status, outcome, message, answer, origin_allowed = _token_handle(request, fields)
    except Exception as error:  # the framework would echo the exception text to the caller
        status, outcome, message, answer = 500, "error", f"unexpected {type(error).__name__}", {"error": "error"}
        _token_write_traceback(error)
    if origin_allowed:
        headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "POST"
            headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            headers["Access-Control-Max-Age"] = str(TOKEN_CORS_MAX_AGE_SECONDS)
    if status == 405:
        headers["Allow"] = "POST, OPTIONS"
    if status == 401:
        headers["WWW-Authenticate"] = (
            "Bearer" if fields["reason"] == "missing_token" else 'Bearer error="invalid_token"'
        )
    fields.update(outcome=outcome, status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1))
    severity = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
    try:
        project = config.settings().project_id
    except Exception:  # unreadable webhook settings: the trace field is only a convenience
        project = None
    logs.write_line(severity, message, **fields, **logs.trace_field(request.headers, project))
    body = "" if answer is None else flask.json.dumps(answer) + "\n"
    if body_read:
        return flask.Response(body, status=status, mimetype="application/json", headers=headers)
    # functions-framework reads any unread body after a non-streamed response: stream, and close.
    headers["Connection"] = "close"
    return flask.Response(iter([body]), status=status, mimetype="application/json", headers=headers)


def _token_read_small_body(request: flask.Request) -> bool:
    """Read (and ignore) a body of a known small length; leave a large or chunked one unread."""
    length = request.content_length
    if length is None:
        return "chunked" not in request.headers.get("Transfer-Encoding", "").lower()
    if length > TOKEN_BODY_LIMIT:
        return False
    from werkzeug.exceptions import BadRequest  # noqa: PLC0415

    try:
        request.get_data()
    except BadRequest:  # fewer bytes than declared, then the client left: the body is ignored anyway
        return False
    return True


TokenAnswer = tuple[int, str, str, dict[str, str] | None, bool]


def _token_handle(request: flask.Request, fields: dict[str, Any]) -> TokenAnswer:
    """Status, outcome, log message, JSON answer and whether the request's Origin may read it."""
    from clerk_sync import session_token as tokens  # noqa: PLC0415 (here: the webhook never loads it)

    if request.method not in {"POST", "OPTIONS"}:
        return 405, "method_not_allowed", f"{request.method} is not allowed", {"error": "method_not_allowed"}, False
    try:
        settings = tokens.settings()
    except tokens.Misconfigured as problem:
        fields["reason"] = problem.variable
        return 500, "misconfigured", str(problem), {"error": "misconfigured"}, False
    origin = request.headers.get("Origin")
    allowed = settings.allows_origin(origin)
    if origin is not None and not allowed:
        # A browser page of another origin: its preflight fails and its POST mints nothing.
        fields["reason"] = "origin_not_allowed"
        return 403, "rejected", "origin not allowed", {"error": "origin_not_allowed"}, False
    if request.method == "OPTIONS":
        return 204, "preflight", "CORS preflight", None, allowed
    try:
        session = tokens.verify_session_token(tokens.bearer_token(request.headers.get("Authorization")), settings)
    except tokens.TokenRejected as rejected:
        fields["reason"] = rejected.reason
        status = TOKEN_STATUS.get(rejected.reason, 401)
        return status, "rejected", f"session token rejected: {rejected.reason}", {"error": rejected.reason}, allowed
    except tokens.KeysUnavailable:
        fields["reason"] = "jwks_unavailable"
        message = "Clerk's JWKS could not be fetched (network, or CLERK_SECRET_KEY)"
        return 503, "unavailable", message, {"error": "unavailable"}, allowed
    fields["clerk_id"] = session.user_id
    try:
        custom_token = tokens.mint_custom_token(session)
    except tokens.MintFailed as failed:
        fields["reason"] = failed.reason
        if failed.reason == "no_credentials":
            message = "no credentials to sign with: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
            return 500, "misconfigured", message, {"error": "misconfigured"}, allowed
        message = "signBlob failed: grant the function's service account roles/iam.serviceAccountTokenCreator on itself"
        return 500, "sign_failed", message, {"error": "sign_failed"}, allowed
    org = session.organization
    fields["org_id"] = org.id if org is not None else None
    return 200, "minted", "custom token minted", {"token": custom_token}, allowed


def _token_write_traceback(error: BaseException) -> None:
    """Where it failed, for the logs: the frames and the exception type, never its message or data."""
    import sys  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    frames = "".join(
        f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
        for frame in traceback.extract_tb(error.__traceback__)
    )
    sys.stderr.write(f"firebase_token: unexpected {type(error).__name__}\nTraceback (most recent call last):\n{frames}")
    sys.stderr.flush()

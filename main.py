"""Cloud Function entry points: HTTP in, status out; the work lives in `clerk_sync`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import flask
import functions_framework
from flask.typing import ResponseReturnValue

if not os.environ.get("K_SERVICE"):
    # Local runs only: on Cloud Run the secret comes from Secret Manager, never from a file.
    from dotenv import load_dotenv

    load_dotenv(Path(__file__).with_name(".env"), override=False)

from clerk_sync import config, events, instance, signature, transaction, web
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import FollowUpFailed, Outcome, StoreUnavailable

MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_STATUS = {"bad_signature": 401}
WEBHOOK_FIELDS = {"svix_id": None, "event_type": None, "clerk_id": None}


def _not_found(_error: Exception) -> flask.Response:
    """The framework's own /robots.txt and /favicon.ico: answered without reading any body."""
    body = '{"outcome": "not_found"}\n'
    return flask.Response(
        iter([body]),
        404,
        mimetype="application/json",
        headers={"Content-Length": str(len(body)), "Connection": "close"},
    )


if flask.has_app_context():
    # functions-framework runs this module inside its app: every body it would ever read itself
    # (after non-streamed answers, and for the paths it serves) is capped, and 404s are streamed.
    flask.current_app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    functions_framework.errorhandler(404)(_not_found)


def _project() -> str | None:
    try:
        return config.settings().project_id
    except config.Misconfigured:  # already answered with a 500 and its own log line
        return None


@functions_framework.http
def clerk_webhook(request: flask.Request) -> ResponseReturnValue:
    """Verify, apply and answer one Svix delivery; never lets an exception reach the framework."""
    # Every line has the same keys (null until known), so log queries and metrics need no guessing.
    return web.serve(
        request, _webhook, component="webhook", fields=dict(WEBHOOK_FIELDS), body_limit=MAX_BODY_BYTES, project=_project
    )


def _webhook(request: flask.Request, fields: dict[str, Any]) -> web.Reply:
    try:
        settings = config.settings()
        key = config.webhook_key()
    except config.Misconfigured as problem:
        fields["reason"] = problem.variable
        return web.Reply(500, "misconfigured", str(problem))
    if request.method != "POST":
        return web.Reply(
            405, "method_not_allowed", f"{request.method} is not allowed, Svix posts", headers={"Allow": "POST"}
        )
    try:
        body = web.read_body(request, MAX_BODY_BYTES)
    except web.BodyRefused as refused:
        return refused.reply
    try:
        signed = signature.verify(key, body, request.headers)
    except signature.SignatureRejected as rejected:
        fields["reason"] = rejected.reason
        return web.Reply(
            SIGNATURE_STATUS.get(rejected.reason, 400), "rejected", f"signature rejected: {rejected.reason}"
        )
    fields["svix_id"] = signed.message_id
    try:
        event = events.parse_event(body)
    except events.MalformedEvent as malformed:
        fields["reason"] = str(malformed)
        # The reason names a field, never its value (tests/test_events.py): safe to tell the sender.
        answer = {"outcome": "malformed", "reason": str(malformed)}
        return web.Reply(400, "malformed", f"malformed event: {malformed}", body=answer)
    fields.update(event_type=event.event_type, clerk_id=event.clerk_id)
    if isinstance(event, events.IgnoredEvent):
        # A type Clerk added after this version says so in its line (Clerk adds types without notice).
        unknown = "" if event.known else ": not a type this version knows"
        return web.Reply(200, "ignored", f"{event.event_type} ignored{unknown}")
    try:
        db = transaction.client(settings.project_id, settings.database)
        settings = instance.admit_event(db, settings, body)
    except events.MalformedEvent as malformed:
        fields["reason"] = str(malformed)
        answer = {"outcome": "malformed", "reason": str(malformed)}
        return web.Reply(400, "malformed", f"malformed event: {malformed}", body=answer)
    except instance.OtherInstance as other:
        fields.update(reason="other_instance", instance_id=other.seen.instance_id, pinned=other.pinned.instance_id)
        return web.Reply(403, "other_instance", f"{event.event_type} refused: {other}")
    except StoreUnavailable as unavailable:
        fields["reason"] = str(unavailable)
        return web.Reply(503, "unavailable", f"{event.event_type} not stored: Firestore unavailable")
    del body  # the parsed event is all that is needed from here on
    delivery = Delivery(message_id=signed.message_id, settings=settings)
    try:
        outcome = events.apply_event(db, event, delivery)
    except FollowUpFailed as failed:
        fields.update(delivery.notes, reason=str(failed))
        return web.Reply(503, "unavailable", f"{event.event_type} stored, follow-up failed: retry completes it")
    except StoreUnavailable as unavailable:
        fields.update(delivery.notes, reason=str(unavailable))
        return web.Reply(503, "unavailable", f"{event.event_type} not stored: Firestore unavailable")
    fields.update(delivery.notes)
    severity = "WARNING" if delivery.warnings else None
    message = "; ".join([f"{event.event_type} {outcome}", *delivery.warnings])
    if outcome is Outcome.CONFLICT:
        return web.Reply(409, str(outcome), f"{message}: primary email still owned by another user")
    return web.Reply(200, str(outcome), message, severity=severity)


RECONCILE_BODY_BYTES = 1024
PERSON_NEEDED = {"other_instance", "mass_deletion"}


@functions_framework.http
def clerk_reconcile(request: flask.Request) -> ResponseReturnValue:
    """One scheduled reconcile run (or the rest of a cut-off one), for Cloud Scheduler's OIDC-signed POST."""
    return web.serve(
        request,
        _reconcile,
        component="reconcile",
        fields={"mode": None},
        body_limit=RECONCILE_BODY_BYTES,
        project=_project,
    )


def _reconcile(request: flask.Request, fields: dict[str, Any]) -> web.Reply:
    from clerk_sync import oidc, reconcile  # noqa: PLC0415 (the webhook never loads these)

    try:
        settings = config.settings()
        scheduled = config.read_reconcile_settings()
    except config.Misconfigured as problem:
        fields["reason"] = problem.variable
        return web.Reply(500, "misconfigured", str(problem))
    if request.method != "POST":
        return web.Reply(405, "method_not_allowed", f"{request.method} is not allowed", headers={"Allow": "POST"})
    try:
        oidc.verify_invoker(
            request.headers.get("Authorization"),
            audience=scheduled.audience,
            invokers=scheduled.invokers,
            certs_url=scheduled.certs_url,
        )
    except oidc.Refused as refused:
        fields["reason"] = refused.reason
        return web.Reply(refused.status, "refused", f"reconcile refused: {refused.reason}")
    try:
        mode = reconcile.Mode(request.args.get("mode", "incremental"))
    except ValueError:
        return web.Reply(400, "bad_request", "mode must be full or incremental")
    fields["mode"] = str(mode)
    api = reconcile.ClerkApi(scheduled.secret_key, scheduled.clerk_api_url)
    try:
        report = reconcile.run(
            transaction.client(settings.project_id, settings.database),
            settings,
            api,
            mode=mode,
            budget_seconds=scheduled.budget_seconds,
            continue_full=True,  # a full run cut off by its budget goes on at the next scheduled run
        )
    except reconcile.ReconcileBusy:
        return web.Reply(409, "busy", "another reconcile run holds the lease")
    finally:
        api.close()
    summary = report.as_dict()
    fields.update(
        mode=str(report.mode),  # full when it went on with a full run an earlier invocation left cut off
        drift=report.drift,
        conflicts=sum(len(tally.conflicts) for tally in report.tallies.values()),
        skipped=sum(len(tally.skipped) for tally in report.tallies.values()),
    )
    if report.stopped:
        fields["reason"] = report.stop_reason
    # A guard that stopped the run waits for a person (500); Clerk or Firestore trouble passes (503).
    status = 200 if not report.stopped else 500 if report.stop_reason in PERSON_NEEDED else 503
    severity = "ERROR" if report.stopped else "WARNING" if report.drift or report.unresolved else "INFO"
    message = f"reconcile {report.mode}: {report.outcome}, drift {report.drift}"
    if report.stopped:
        message += f": {report.stopped}"
    if report.resume:
        message += f"; {report.resume}"
    return web.Reply(status, report.outcome, message, body=summary, severity=severity)


TOKEN_BODY_BYTES = 1024  # the exchange needs no body: none is ever read
TOKEN_STATUS = {"pending_session": 403, "origin_not_allowed": 403}
TOKEN_CORS_MAX_AGE_SECONDS = 600


@functions_framework.http
def firebase_token(request: flask.Request) -> ResponseReturnValue:
    """Exchange a verified Clerk session token for a Firebase custom token (docs/reading-from-your-app.md)."""
    return web.serve(
        request,
        _token,
        component="token",
        fields={"clerk_id": None, "org_id": None},
        body_limit=TOKEN_BODY_BYTES,
        project=_project,
        error_body={"error": "error"},
    )


def _token(request: flask.Request, fields: dict[str, Any]) -> web.Reply:
    # Imported here: the webhook never loads PyJWT or firebase-admin.
    from clerk_sync import custom_token, firebase_auth, jwks, token_settings  # noqa: PLC0415
    from clerk_sync import session_token as tokens  # noqa: PLC0415

    headers = {"Vary": "Origin", "Cache-Control": "no-store"}
    if request.content_length is not None and request.content_length <= TOKEN_BODY_BYTES:
        with contextlib.suppress(web.BodyRefused):
            web.read_body(request, TOKEN_BODY_BYTES)  # read and ignored: the connection can be reused
    if request.method not in {"POST", "OPTIONS"}:
        headers["Allow"] = "POST, OPTIONS"
        return web.Reply(405, "method_not_allowed", f"{request.method} is not allowed",
                         body={"error": "method_not_allowed"}, headers=headers)  # fmt: skip
    try:
        settings = token_settings.settings()
    except token_settings.Misconfigured as problem:
        fields["reason"] = problem.variable
        return web.Reply(500, "misconfigured", str(problem), body={"error": "misconfigured"}, headers=headers)
    origin = request.headers.get("Origin")
    if origin is not None and not settings.allows_origin(origin):
        # A page of another origin: its preflight fails and its POST mints nothing.
        fields["reason"] = "origin_not_allowed"
        return web.Reply(403, "rejected", "origin not allowed", body={"error": "origin_not_allowed"}, headers=headers)
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
    if request.method == "OPTIONS":
        headers.update({
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": str(TOKEN_CORS_MAX_AGE_SECONDS),
        })  # fmt: skip
        return web.Reply(204, "preflight", "CORS preflight", body={}, headers=headers)
    try:
        session = tokens.verify_session_token(tokens.bearer_token(request.headers.get("Authorization")), settings)
    except tokens.TokenRejected as rejected:
        fields["reason"] = rejected.reason
        status = TOKEN_STATUS.get(rejected.reason, 401)
        if status == 401:
            missing = rejected.reason == "missing_token"
            headers["WWW-Authenticate"] = "Bearer" if missing else 'Bearer error="invalid_token"'
        return web.Reply(status, "rejected", f"session token rejected: {rejected.reason}",
                         body={"error": rejected.reason}, headers=headers)  # fmt: skip
    except jwks.KeysUnavailable:
        fields["reason"] = "jwks_unavailable"
        return web.Reply(503, "unavailable", "Clerk's JWKS could not be fetched (network, or CLERK_SECRET_KEY)",
                         body={"error": "unavailable"}, headers=headers)  # fmt: skip
    fields["clerk_id"] = session.user_id
    try:
        minted = custom_token.mint(session)
    except firebase_auth.AuthFailed as failed:
        return _mint_failed(failed.reason, fields, headers)
    fields["org_id"] = session.organization.id if session.organization is not None else None
    return web.Reply(200, "minted", "custom token minted", body={"token": minted}, headers=headers)


def _mint_failed(reason: str, fields: dict[str, Any], headers: dict[str, str]) -> web.Reply:
    """What a signing failure tells the caller (and the log line, the operator)."""
    if reason == "no_credentials":
        fields["reason"] = "no_credentials"
        message = "no credentials to sign with: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
        return web.Reply(500, "misconfigured", message, body={"error": "misconfigured"}, headers=headers)
    if reason == "denied":
        fields["reason"] = "sign_failed"
        message = (
            "signBlob refused: grant the function's service account roles/iam.serviceAccountTokenCreator on itself"
        )
        return web.Reply(500, "sign_failed", message, body={"error": "sign_failed"}, headers=headers)
    fields["reason"] = "sign_unavailable"
    headers["Retry-After"] = "1"
    return web.Reply(503, "unavailable", "signing is unavailable for now (IAM signBlob: quota, network or Google)",
                     body={"error": "unavailable"}, headers=headers)  # fmt: skip

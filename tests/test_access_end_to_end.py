"""Access ends when Clerk says so, end to end through the real servers and both emulators.

The webhook and the token exchange run as functions-framework servers; the Firebase Auth emulator
signs users in and refreshes their sessions; the Firestore emulator enforces the project's
firestore.rules. A user exchanges two Clerk sessions (two devices) and reads their own document,
their organization and its members; then Clerk's events arrive: a ban (every read denied at once,
the refresh refused), an unban (a new exchange reads again), one session revoked (that session
denied, the other still reads), the deletion (the refresh refused). A failed Auth call is a 503
whose retry completes it. The test keeps a timeline of what each step got, and how long the
webhook took; `-rP` prints it (docs/reading-from-your-app.md shows one).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import emulator
import node_script
import pytest
from auth_emulator import post_json, sign_in_with_custom_token
from auth_proxy import AuthProxy, proxying
from clerk_events import (
    deletion_event,
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_event,
    session_event,
    signed_headers,
    user_event,
)
from clerk_sessions import (
    APP_ORIGIN,
    AUTHORIZED_PARTIES,
    CLERK_PUBLIC_PEM,
    new_session_id,
    session_token,
    v2_organization,
)
from conftest import PROJECT, ROOT, Server, start_server, stop_server
from google.cloud import firestore
from loopback import send

RULES = (ROOT / "firestore.rules").read_text()
DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
TIMEOUT_SECONDS = 20.0
READS = ("own document", "organization", "members", "own membership", "own memberships")
READS_OF_THE_PACKAGE = ("own user", "own memberships", "organization", "members")


@dataclass
class Servers:
    """The running parts, and what the scenario saw."""

    webhook: Server
    token: Server
    auth: str  # the Auth emulator, as clients reach it
    firestore: str
    proxy: AuthProxy  # between the webhook and the Auth emulator
    timeline: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        self.timeline.append(line)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, auth_emulator_host: str, emulator_host: str) -> Iterator[Servers]:
    """The webhook (its Auth calls through a proxy that can fail) and the token exchange, both local."""
    directory = tmp_path_factory.mktemp("access")
    base = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "GOOGLE_CLOUD_PROJECT": PROJECT, "THREADS": "8"}
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "SYNC_FIREBASE_AUTH", "ALLOW_ANY_AUTHORIZED_PARTY"):
        base.pop(name, None)
    emulator.load_rules(emulator_host, PROJECT, RULES)
    with proxying(auth_emulator_host) as proxy:
        (directory / "webhook").mkdir()
        (directory / "token").mkdir()
        webhook = start_server(directory / "webhook", {**base, "FIREBASE_AUTH_EMULATOR_HOST": proxy.host})
        try:
            token = start_server(
                directory / "token",
                {
                    **base,
                    "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,  # unsigned custom tokens, for the emulator
                    "CLERK_JWT_KEY": CLERK_PUBLIC_PEM,
                    "CLERK_AUTHORIZED_PARTIES": AUTHORIZED_PARTIES,
                },
                target="firebase_token",
            )
        except BaseException:
            stop_server(webhook)
            raise
        try:
            yield Servers(webhook, token, auth_emulator_host, emulator_host, proxy)
        finally:
            stop_server(token)
            stop_server(webhook)


@pytest.fixture
def fresh(servers: Servers, db: firestore.Client) -> Servers:
    """The servers on a wiped database, the Auth proxy passing calls through."""
    servers.proxy.failing = False
    servers.timeline.clear()
    return servers


def deliver(servers: Servers, what: str, body: str, message_id: str | None = None) -> tuple[int, str]:
    """One signed delivery to the webhook server; its status and outcome (noted with its latency)."""
    started = time.monotonic()
    reply = send(servers.webhook.url, body.encode(), signed_headers(body, message_id=message_id or new_message_id()))
    elapsed = (time.monotonic() - started) * 1000
    outcome = str(reply.json().get("outcome"))
    servers.note(f"webhook  {what:<34} {reply.status} {outcome} in {elapsed:.0f} ms")
    return reply.status, outcome


@dataclass
class Device:
    """A client signed in to Firebase from one Clerk session."""

    name: str
    session_id: str
    id_token: str
    refresh_token: str


def exchange(servers: Servers, user_id: str, org_id: str, session_id: str) -> tuple[int, dict[str, Any]]:
    """The app's exchange of a Clerk session token for a Firebase custom token."""
    clerk_token = session_token(user_id, sid=session_id, **v2_organization(org_id))
    reply = send(servers.token.url, None, {"Authorization": f"Bearer {clerk_token}", "Origin": APP_ORIGIN})
    return reply.status, reply.json()


def sign_in(servers: Servers, name: str, user_id: str, org_id: str) -> Device | str:
    """Exchange a new Clerk session and sign in to Firebase with it; the device, or the sign-in error."""
    session_id = new_session_id()
    status, answer = exchange(servers, user_id, org_id, session_id)
    assert status == 200, answer
    status, signed_in = sign_in_with_custom_token(servers.auth, answer["token"])
    if status != 200:
        servers.note(f"{name:<8} exchange 200, sign-in {signed_in['error']['message']}")
        return str(signed_in["error"]["message"])
    servers.note(f"{name:<8} exchange 200, sign-in 200 (Clerk session {session_id[:9]}...)")
    return Device(name, session_id, str(signed_in["idToken"]), str(signed_in["refreshToken"]))


def refresh(servers: Servers, device: Device) -> str:
    """The Firebase SDK's refresh of the device's ID token: `ok` (the new ID token kept), or the error."""
    status, answer = post_json(
        f"http://{servers.auth}/securetoken.googleapis.com/v1/token?key=any",
        {"grant_type": "refresh_token", "refresh_token": device.refresh_token},
    )
    result = "ok" if status == 200 else str(answer["error"]["message"])
    if status == 200:
        device.id_token = str(answer["id_token"])
    servers.note(f"{device.name:<8} refresh: {result}")
    return result


def _rest(servers: Servers, method: str, path: str, id_token: str, body: dict[str, Any] | None = None) -> int:
    url = f"http://{servers.firestore}/v1/{DOCUMENTS}" + (path if path.startswith(":") else f"/{path}")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {id_token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def reads(servers: Servers, device: Device, user_id: str, org_id: str) -> dict[str, int]:
    """Everything the app reads, with the device's ID token, as the rules answer it."""
    where = {"fieldFilter": {"field": {"fieldPath": "user_id"}, "op": "EQUAL", "value": {"stringValue": user_id}}}
    query = {"structuredQuery": {"from": [{"collectionId": "memberships", "allDescendants": True}], "where": where}}
    statuses = {
        "own document": _rest(servers, "GET", f"users/{user_id}", device.id_token),
        "organization": _rest(servers, "GET", f"organizations/{org_id}", device.id_token),
        "members": _rest(servers, "GET", f"organizations/{org_id}/memberships", device.id_token),
        "own membership": _rest(servers, "GET", f"organizations/{org_id}/memberships/{user_id}", device.id_token),
        "own memberships": _rest(servers, "POST", ":runQuery", device.id_token, query),
    }
    shown = ", ".join(f"{name} {status}" for name, status in statuses.items())
    servers.note(f"{device.name:<8} reads: {shown}")
    return statuses


def everything(status: int) -> dict[str, int]:
    return dict.fromkeys(READS, status)


def claims_of(id_token: str) -> dict[str, Any]:
    segment = id_token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return payload


def test_a_ban_a_revoked_session_and_a_deletion_end_firebase_access_and_an_unban_restores_it(
    fresh: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = fresh
    user_id, org_id = new_user_id(), new_organization_id()
    email = f"{user_id.lower()}@example.com"
    deliver(servers, "user.created", user_event("user.created", user_id, emails=[email], updated_at=1_000))
    deliver(servers, "organization.created", organization_event("organization.created", org_id))
    member = membership_event("organizationMembership.created", new_membership_id(), org_id, user_id)
    deliver(servers, "organizationMembership.created", member)
    laptop = sign_in(servers, "laptop", user_id, org_id)
    phone = sign_in(servers, "phone", user_id, org_id)
    assert isinstance(laptop, Device)
    assert isinstance(phone, Device)
    assert claims_of(laptop.id_token)["clerk_sid"] == laptop.session_id
    assert reads(servers, laptop, user_id, org_id) == everything(200)

    ban = user_event("user.updated", user_id, emails=[email], updated_at=2_000, banned=True)
    assert deliver(servers, "user.updated (banned)", ban) == (200, "applied")
    assert reads(servers, laptop, user_id, org_id) == everything(403)  # the same ID token, at once
    assert reads(servers, phone, user_id, org_id) == everything(403)
    assert refresh(servers, laptop) == "USER_DISABLED"
    assert sign_in(servers, "tablet", user_id, org_id) == "USER_DISABLED"

    unban = user_event("user.updated", user_id, emails=[email], updated_at=3_000, banned=False)
    assert deliver(servers, "user.updated (unbanned)", unban) == (200, "applied")
    tablet = sign_in(servers, "tablet", user_id, org_id)
    assert isinstance(tablet, Device)
    assert reads(servers, tablet, user_id, org_id) == everything(200)
    assert refresh(servers, laptop) == "ok"

    revoked = session_event("session.revoked", laptop.session_id, user_id)
    assert deliver(servers, "session.revoked (laptop's)", revoked) == (200, "applied")
    assert reads(servers, laptop, user_id, org_id) == everything(403)
    assert refresh(servers, laptop) == "ok"  # its refresh token lives on (see the docs), but:
    assert reads(servers, laptop, user_id, org_id) == everything(403)
    assert reads(servers, phone, user_id, org_id) == everything(200)  # the other device reads on

    assert deliver(servers, "user.deleted", deletion_event(user_id)) == (200, "applied")
    assert reads(servers, phone, user_id, org_id) == everything(403)
    assert refresh(servers, phone) == "INVALID_REFRESH_TOKEN"
    print("\n".join(servers.timeline))


def test_a_failed_auth_call_answers_503_and_svixs_retry_completes_it(fresh: Servers) -> None:
    servers = fresh
    user_id, org_id = new_user_id(), new_organization_id()
    email = f"{user_id.lower()}@example.com"
    deliver(servers, "user.created", user_event("user.created", user_id, emails=[email], updated_at=1_000))
    deliver(servers, "organization.created", organization_event("organization.created", org_id))
    deliver(
        servers,
        "organizationMembership.created",
        membership_event("organizationMembership.created", new_membership_id(), org_id, user_id),
    )
    laptop = sign_in(servers, "laptop", user_id, org_id)
    assert isinstance(laptop, Device)
    ban, message_id = (
        user_event("user.updated", user_id, emails=[email], updated_at=2_000, banned=True),
        new_message_id(),
    )
    servers.proxy.failing = True

    failed = deliver(servers, "user.updated (banned), Auth down", ban, message_id)
    denied_meanwhile = reads(servers, laptop, user_id, org_id)
    refresh_meanwhile = refresh(servers, laptop)
    servers.proxy.failing = False
    retried = deliver(servers, "the same message, retried", ban, message_id)

    assert failed == (503, "unavailable")
    assert denied_meanwhile == everything(403)  # the commit stood: the rules decide, not Auth
    assert refresh_meanwhile == "ok"
    assert retried == (200, "duplicate")
    assert refresh(servers, laptop) == "USER_DISABLED"


def test_a_ban_ends_the_apps_live_reads_and_its_firebase_session_through_the_client_package(
    fresh: Servers, docs_ts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = fresh
    user_id, org_id = new_user_id(), new_organization_id()
    email = f"{user_id.lower()}@example.com"
    deliver(servers, "user.created", user_event("user.created", user_id, emails=[email], updated_at=1_000))
    deliver(servers, "organization.created", organization_event("organization.created", org_id))
    member = membership_event("organizationMembership.created", new_membership_id(), org_id, user_id)
    deliver(servers, "organizationMembership.created", member)
    session_id, new_session = new_session_id(), new_session_id()
    environment = {
        "PROJECT_ID": PROJECT,
        "FIREBASE_AUTH_EMULATOR_HOST": servers.auth,
        "FIRESTORE_EMULATOR_HOST": servers.firestore,
        "TOKEN_URL": servers.token.url,
        "SESSION_ID": session_id,
        "ORG_ID": org_id,
        "CLERK_SESSION_TOKEN": session_token(user_id, sid=session_id, **v2_organization(org_id)),
        "NEW_SESSION_ID": new_session,
        "NEW_CLERK_SESSION_TOKEN": session_token(user_id, sid=new_session, **v2_organization(org_id)),
    }
    app = node_script.start("live_reads.mjs", environment, tmp_path)
    try:
        ready = node_script.read_json_line(app, TIMEOUT_SECONDS * 2)
        ban = user_event("user.updated", user_id, emails=[email], updated_at=2_000, banned=True)
        banned_at = time.time() * 1000
        delivered = deliver(servers, "user.updated (banned)", ban)
        node_script.say(app, "banned")
        report = node_script.read_json_line(app, TIMEOUT_SECONDS * 2)
        assert app.wait(timeout=TIMEOUT_SECONDS) == 0
    finally:
        node_script.stop(app)
    events = [event for event in report["events"] if event["at"] >= banned_at]
    seen = {event["what"]: event for event in events}
    for event in events:
        reason = f" ({event['reason']})" if event.get("reason") else ""
        servers.note(f"app      +{event['at'] - banned_at:5.0f} ms  {event['what']}{reason}")
    print("\n".join(servers.timeline))
    assert ready == {"ready": {"banned": False, "memberships": 1, "organization": org_id, "members": 1}}
    assert delivered == (200, "applied")
    ended = {name: seen[f"{name} ended"]["reason"] for name in READS_OF_THE_PACKAGE}
    assert ended == dict.fromkeys(READS_OF_THE_PACKAGE, "permission-denied")
    assert seen["connection access-ended"]["reason"] == "permission-denied"
    assert seen["firebase signed out"]["at"] >= seen["connection access-ended"]["at"]
    # The ended session is not exchanged again; a new session is, and Firebase refuses the disabled user.
    assert [event["what"] for event in events if event["what"].startswith("connection")] == [
        "connection access-ended",
        "connection sign-in-failed",
    ]
    assert seen["connection sign-in-failed"]["reason"] == "auth/user-disabled"
    assert report["current_user"] is None
    assert all(event["at"] - banned_at < TIMEOUT_SECONDS * 1000 for event in events)

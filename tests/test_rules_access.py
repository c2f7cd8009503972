"""Access ends when Clerk says so, in the rules: over the emulator's REST API, on data the webhook wrote.

A banned, deprovisioned or deleted user reads nothing (own document, organization, members, own
memberships), whatever ID token they hold; a Firebase session whose Clerk session ended reads nothing
while the same user's other session still does; a token without `clerk_sid` reads nothing; a locked
user still reads (Clerk's lockout ends no session). Each part of the new rules is shown to matter:
a copy of the rules without it lets some request of the matrix through.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import emulator
import pytest
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
from clerk_sessions import new_session_id
from conftest import PATHS, PROJECT, ROOT
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import config

RULES = (ROOT / "firestore.rules").read_text()
DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
TIMEOUT_SECONDS = 10


def _base64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str, session_id: str | None) -> str:
    """An unsigned Firebase ID token as firebase_token's custom token makes it (None: no clerk_sid)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": uid,
        "user_id": uid,
        "aud": PROJECT,
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    if session_id is not None:
        payload["clerk_sid"] = session_id
    return f"{_base64url({'alg': 'none', 'typ': 'JWT'})}.{_base64url(payload)}."


@dataclass(frozen=True)
class Reader:
    """A signed-in client: whose, from which Clerk session, and what it must get."""

    name: str
    uid: str
    session_id: str | None
    reads: bool  # everything below is allowed, or everything denied


@dataclass(frozen=True)
class World:
    """What the webhook wrote: one organization, and its members in every state."""

    org: str
    readers: list[Reader]
    not_synced_yet: str  # a member whose user.created has not arrived


def request(host: str, method: str, path: str, reader: Reader, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One client request with the reader's ID token; status and decoded JSON."""
    url = f"http://{host}/v1/{DOCUMENTS}" + (path if path.startswith(":") else f"/{path}")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {id_token(reader.uid, reader.session_id)}"}
    data = json.dumps(body).encode() if body is not None else None
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def own_memberships(uid: str) -> dict[str, Any]:
    """The collection-group query an app runs for its user's memberships."""
    where = {"fieldFilter": {"field": {"fieldPath": "user_id"}, "op": "EQUAL", "value": {"stringValue": uid}}}
    return {"structuredQuery": {"from": [{"collectionId": "memberships", "allDescendants": True}], "where": where}}


def requests_of(world: World, reader: Reader) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(what, method, path, body) of everything a reader's app reads."""
    organization = f"{PATHS.organizations}/{world.org}"
    return [
        ("own user document", "GET", f"{PATHS.users}/{reader.uid}", None),
        ("organization", "GET", organization, None),
        ("organization's members", "GET", PATHS.memberships(world.org), None),
        ("own membership", "GET", f"{PATHS.memberships(world.org)}/{reader.uid}", None),
        ("own memberships across organizations", "POST", ":runQuery", own_memberships(reader.uid)),
    ]


def wrong_answers(host: str, world: World) -> list[str]:
    """Every request whose answer the loaded rules get wrong (empty when they hold)."""
    problems = []
    for reader in world.readers:
        for what, method, path, body in requests_of(world, reader):
            status, answer = request(host, method, path, reader, body)
            denied = status == 403 and isinstance(answer, dict) and answer["error"]["status"] == "PERMISSION_DENIED"
            if reader.reads and status != 200:
                problems.append(f"{reader.name} / {what}: expected 200, got {status}")
            elif not reader.reads and not denied:
                problems.append(f"{reader.name} / {what}: expected PERMISSION_DENIED, got {status}")
    return problems


def deliver(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    assert response.status_code == 200, response.get_json()


@pytest.fixture
def rules_host(emulator_host: str) -> Iterator[str]:
    emulator.load_rules(emulator_host, PROJECT, RULES)
    try:
        yield emulator_host
    finally:
        emulator.load_rules(emulator_host, PROJECT, RULES)


@pytest.fixture
def world(client: FlaskClient, db: firestore.Client) -> World:
    """Members of one organization in every state Clerk can put them in, all written by the webhook."""
    org = new_organization_id()
    names = ("active", "locked", "banned", "deprovisioned", "deleted", "deleted_keeping_app_fields", "unsynced")
    uid = {name: new_user_id() for name in names}
    live, ended, other_live = new_session_id(), new_session_id(), new_session_id()
    deliver(client, organization_event("organization.created", org))
    for name in names[:-1]:
        deliver(client, user_event("user.created", uid[name], emails=[f"{uid[name].lower()}@example.com"]))
    for name in names:
        deliver(client, membership_event("organizationMembership.created", new_membership_id(), org, uid[name]))
    for flag in ("locked", "banned", "deprovisioned"):
        email = f"{uid[flag].lower()}@example.com"
        deliver(client, user_event("user.updated", uid[flag], emails=[email], updated_at=2**41, **{flag: True}))
    deliver(client, session_event("session.revoked", ended, uid["active"]))
    deliver(client, deletion_event(uid["deleted"]))
    db.collection(PATHS.users).document(uid["deleted_keeping_app_fields"]).set({"theme": "dark"}, merge=True)
    os.environ["ON_USER_DELETED"] = "keep-app-fields"
    config.reset()
    deliver(client, deletion_event(uid["deleted_keeping_app_fields"]))
    kept = db.collection(PATHS.users).document(uid["deleted_keeping_app_fields"]).get(timeout=TIMEOUT_SECONDS)
    assert (kept.to_dict() or {}).get("theme") == "dark"  # the app's field stays, with the deletion mark
    for name in ("banned", "deprovisioned", "locked"):
        stored = db.collection(PATHS.users).document(uid[name]).get(timeout=TIMEOUT_SECONDS).to_dict() or {}
        assert stored[name] is True, name
    readers = [
        Reader("active user", uid["active"], live, reads=True),
        Reader("active user's other session", uid["active"], other_live, reads=True),
        Reader("locked user", uid["locked"], new_session_id(), reads=True),
        Reader("active user's ended session", uid["active"], ended, reads=False),
        Reader("active user without clerk_sid", uid["active"], None, reads=False),
        Reader("banned user", uid["banned"], new_session_id(), reads=False),
        Reader("deprovisioned user", uid["deprovisioned"], new_session_id(), reads=False),
        Reader("deleted user", uid["deleted"], new_session_id(), reads=False),
        Reader("deleted user with app fields kept", uid["deleted_keeping_app_fields"], new_session_id(), reads=False),
    ]
    return World(org=org, readers=readers, not_synced_yet=uid["unsynced"])


def test_only_live_sessions_of_users_clerk_lets_in_read_anything(rules_host: str, world: World) -> None:
    assert wrong_answers(rules_host, world) == []


def test_a_member_whose_user_document_has_not_arrived_reads_nothing_yet_and_their_own_read_finds_nothing(
    rules_host: str, world: World
) -> None:
    reader = Reader("not synced yet", world.not_synced_yet, new_session_id(), reads=False)

    own = request(rules_host, "GET", f"{PATHS.users}/{reader.uid}", reader)
    organization = request(rules_host, "GET", f"{PATHS.organizations}/{world.org}", reader)

    assert own[0] == 404  # allowed: a listener started at sign-up keeps listening until the document exists
    assert organization[0] == 403


def test_unban_restores_every_read(rules_host: str, world: World, client: FlaskClient) -> None:
    banned = next(reader for reader in world.readers if reader.name == "banned user")
    deliver(
        client, user_event("user.updated", banned.uid, emails=[f"{banned.uid.lower()}@example.com"], updated_at=2**42)
    )

    restored = World(
        world.org, [Reader("unbanned user", banned.uid, banned.session_id, reads=True)], world.not_synced_yet
    )

    assert wrong_answers(rules_host, restored) == []


def _rules_with(original: str, loosened: str) -> str:
    assert original in RULES, f"{original!r} is no longer in firestore.rules: update the variant"
    return RULES.replace(original, loosened)


SESSION_CHECK = "\n        && !exists(/databases/$(database)/documents/ended_sessions/$(request.auth.token.clerk_sid))"
LOOSENED = {
    "banned not checked": ("user.get('banned', false) != true\n        && ", ""),
    "deprovisioned not checked": ("\n        && user.get('deprovisioned', false) != true", ""),
    "deletion mark not checked": ("\n        && !('clerk_deleted_at' in user)", ""),
    "ended sessions not checked": (SESSION_CHECK, ""),
    "tokens without clerk_sid let in": (
        "request.auth.token.clerk_sid is string" + SESSION_CHECK,
        "(!('clerk_sid' in request.auth.token) || (true" + SESSION_CHECK + "))",
    ),
    "members' rule skips the reader": (
        "return clerkSyncReader()\n        && exists(",
        "return request.auth != null\n        && exists(",
    ),
    "own memberships skip the reader": ("request.auth.uid && clerkSyncReader();", "request.auth.uid;"),
    "own document skips the user's state": (
        "              : clerkSyncAllowed(resource.data));",
        "              : true);",
    ),
    "own document skips the session": (
        "allow get: if clerkSyncSessionLive() && request.auth.uid == userId",
        "allow get: if request.auth != null && request.auth.uid == userId",
    ),
    "deleted user's missing document not checked": (
        "? !exists(/databases/$(database)/documents/user_tombstones/$(userId))",
        "? true",
    ),
}


@pytest.mark.parametrize("variant", sorted(LOOSENED))
def test_the_matrix_notices_rules_with_a_check_left_out(rules_host: str, world: World, variant: str) -> None:
    emulator.load_rules(rules_host, PROJECT, _rules_with(*LOOSENED[variant]))

    problems = wrong_answers(rules_host, world)

    assert problems, f"the matrix passed rules with {variant}"
    assert all("expected PERMISSION_DENIED" in problem for problem in problems), problems  # opened, not broken

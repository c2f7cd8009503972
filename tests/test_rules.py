"""firestore.rules against the emulator's REST API: a client sees its own user document and nothing else.

The Python client always authenticates as the emulator's owner (rules bypassed), so these checks
speak REST with unsigned Firebase ID tokens, as the emulator accepts them, on data that the webhook
function itself wrote.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import emulator
import pytest
from clerk_events import deletion_event, new_message_id, new_user_id, signed_headers, user_event
from conftest import PATHS, PROJECT, ROOT, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import event_log, ids
from clerk_sync.users import normalise_email

RULES = (ROOT / "firestore.rules").read_text()
REQUEST_TIMEOUT_SECONDS = 10
DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
LIVE_SESSION = "sess_live0000000000000000000000"  # never ended in these tests
UNMENTIONED = "app_settings"


def _base64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str) -> str:
    """An unsigned Firebase ID token for `uid`; the emulator trusts it, production never would."""
    now = int(time.time())
    claims = {
        "sub": uid,
        "user_id": uid,
        "aud": PROJECT,
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
        "clerk_sid": LIVE_SESSION,  # as firebase_token puts it in every custom token
    }
    return f"{_base64url({'alg': 'none', 'typ': 'JWT'})}.{_base64url(claims)}."


@dataclass(frozen=True)
class Check:
    """One client request and whether the rules must allow it."""

    name: str
    method: str
    path: str  # below .../documents, e.g. "users/user_1" or ":runQuery"
    uid: str | None  # None: signed out, no Authorization header
    allowed: bool
    body: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    """Ids of the documents the webhook function wrote for the matrix."""

    owner: str
    other: str
    deleted: str
    stranger: str  # signed in, but Clerk never sent an event for this id
    owner_claim: str
    other_claim: str
    owner_event: str


def call(host: str, check: Check) -> tuple[int, dict[str, Any] | list[Any]]:
    """Send one REST request as the check's client; the status and the decoded JSON body."""
    url = f"http://{host}/v1/{DOCUMENTS}"
    url += check.path if check.path.startswith(":") else f"/{check.path}"
    if check.query:
        url += "?" + urllib.parse.urlencode(check.query)
    headers = {"Content-Type": "application/json"}
    if check.uid is not None:
        headers["Authorization"] = f"Bearer {id_token(check.uid)}"
    data = json.dumps(check.body).encode() if check.body is not None else None
    request = urllib.request.Request(url, data=data, method=check.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def failure(host: str, check: Check) -> str | None:
    """Why the rules' answer to `check` is wrong, or None when it is right."""
    status, answer = call(host, check)
    if not check.allowed:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        denied = status == 403 and error.get("status") == "PERMISSION_DENIED"
        return None if denied else f"{check.name}: expected PERMISSION_DENIED, got {status}"
    if status != 200:
        return f"{check.name}: expected 200, got {status} {answer}"
    # The only allowed request is a get of one's own document: it must be that document.
    returned = answer.get("fields", {}).get("clerk_id", {}).get("stringValue") if isinstance(answer, dict) else None
    return None if returned == check.uid else f"{check.name}: returned clerk_id {returned!r}, not {check.uid!r}"


def evaluate(host: str, checks: list[Check]) -> list[str]:
    """Every check the currently loaded rules get wrong (empty when the rules hold)."""
    return [problem for check in checks if (problem := failure(host, check)) is not None]


def _fields(**values: str) -> dict[str, Any]:
    return {"fields": {name: {"stringValue": value} for name, value in values.items()}}


def _users_query(*, all_descendants: bool = False, where: dict[str, Any] | None = None) -> dict[str, Any]:
    query: dict[str, Any] = {"from": [{"collectionId": PATHS.users, "allDescendants": all_descendants}]}
    if where is not None:
        query["where"] = {
            "fieldFilter": {"field": {"fieldPath": where["field"]}, "op": "EQUAL", "value": where["value"]}
        }
    return {"structuredQuery": query}


def reads_of_users(world: World) -> list[Check]:
    """Who may get a user document: its owner, and nobody else."""
    owner_doc, other_doc = f"users/{world.owner}", f"users/{world.other}"
    return [
        Check("owner gets own user document", "GET", owner_doc, world.owner, allowed=True),
        Check("other user gets owner's document", "GET", owner_doc, world.other, allowed=False),
        Check("owner gets other user's document", "GET", other_doc, world.owner, allowed=False),
        Check("user without document gets owner's document", "GET", owner_doc, world.stranger, allowed=False),
        Check("signed out gets a user document", "GET", owner_doc, None, allowed=False),
        Check(
            "owner batch-gets other user's document",
            "POST",
            ":batchGet",
            world.owner,
            allowed=False,
            body={"documents": [f"{DOCUMENTS}/{other_doc}"]},
        ),
        Check(
            "owner reads a subcollection under own user document",
            "GET",
            f"{owner_doc}/private/notes",
            world.owner,
            allowed=False,
        ),
    ]


def listing_of_users(world: World) -> list[Check]:
    """Nobody lists or queries users, not even with a filter on their own id."""
    return [
        Check("owner lists users", "GET", "users", world.owner, allowed=False),
        Check("signed out lists users", "GET", "users", None, allowed=False),
        Check("owner queries all users", "POST", ":runQuery", world.owner, allowed=False, body=_users_query()),
        Check(
            "owner queries users where clerk_id is own id",
            "POST",
            ":runQuery",
            world.owner,
            allowed=False,
            body=_users_query(where={"field": "clerk_id", "value": {"stringValue": world.owner}}),
        ),
        Check(
            "owner queries users where the document id is own id",
            "POST",
            ":runQuery",
            world.owner,
            allowed=False,
            body=_users_query(
                where={"field": "__name__", "value": {"referenceValue": f"{DOCUMENTS}/users/{world.owner}"}}
            ),
        ),
        Check(
            "owner runs a collection-group query on users",
            "POST",
            ":runQuery",
            world.owner,
            allowed=False,
            body=_users_query(all_descendants=True),
        ),
    ]


def writes_of_users(world: World) -> list[Check]:
    """No client writes a user document: only the webhook function does."""
    checks = [
        Check(
            "signed-in user creates own user document",
            "POST",
            "users",
            world.stranger,
            allowed=False,
            body=_fields(clerk_id=world.stranger),
            query={"documentId": world.stranger},
        ),
        Check(
            "owner creates another user's document",
            "POST",
            "users",
            world.owner,
            allowed=False,
            body=_fields(clerk_id="user_forged"),
            query={"documentId": "user_forged"},
        ),
    ]
    for uid, target, whose in ((world.owner, world.owner, "own"), (world.owner, world.other, "other user's")):
        checks += [
            Check(
                f"owner updates {whose} user document",
                "PATCH",
                f"users/{target}",
                uid,
                allowed=False,
                body=_fields(email="attacker@example.com"),
                query={"updateMask.fieldPaths": "email", "currentDocument.exists": "true"},
            ),
            Check(f"owner deletes {whose} user document", "DELETE", f"users/{target}", uid, allowed=False),
        ]
    return checks


def internal_collections(world: World) -> list[Check]:
    """Claims, tombstones, the event log and unmentioned collections: no client access of any kind."""
    existing = {
        PATHS.claims: world.owner_claim,
        PATHS.user_tombstones: world.deleted,
        PATHS.events: world.owner_event,
        UNMENTIONED: world.owner,
    }
    checks = []
    for collection, document in existing.items():
        path = f"{collection}/{document}"
        checks += [
            Check(f"owner gets {path}", "GET", path, world.owner, allowed=False),
            Check(f"deleted user gets {path}", "GET", path, world.deleted, allowed=False),
            Check(f"signed out gets {path}", "GET", path, None, allowed=False),
            Check(f"owner lists {collection}", "GET", collection, world.owner, allowed=False),
            Check(
                f"owner queries {collection}",
                "POST",
                ":runQuery",
                world.owner,
                allowed=False,
                body={"structuredQuery": {"from": [{"collectionId": collection}]}},
            ),
            Check(
                f"owner creates a document in {collection}",
                "POST",
                collection,
                world.owner,
                allowed=False,
                body=_fields(clerk_id=world.owner),
                query={"documentId": "forged"},
            ),
            Check(
                f"owner updates {path}",
                "PATCH",
                path,
                world.owner,
                allowed=False,
                body=_fields(clerk_id=world.owner),
                query={"updateMask.fieldPaths": "clerk_id", "currentDocument.exists": "true"},
            ),
            Check(f"owner deletes {path}", "DELETE", path, world.owner, allowed=False),
        ]
    checks.append(
        Check("other user gets owner's claim", "GET", f"{PATHS.claims}/{world.other_claim}", world.other, allowed=False)
    )
    return checks


def matrix(world: World) -> list[Check]:
    """The whole rules matrix, deletes last so an opened rule cannot hide later checks."""
    checks = reads_of_users(world) + listing_of_users(world) + writes_of_users(world) + internal_collections(world)
    return sorted(checks, key=lambda check: check.method == "DELETE")


def _deliver(client: FlaskClient, body: str) -> str:
    message_id = new_message_id()
    response = client.post("/", data=body, headers=signed_headers(body, message_id=message_id))
    assert response.status_code == 200, response.get_json()
    return message_id


def _claim_id(address: str) -> str:
    key = normalise_email(address)
    assert key is not None
    return ids.document_id(key)


@pytest.fixture
def rules_host(emulator_host: str) -> Iterator[str]:
    """The emulator with the repo's firestore.rules loaded for the test project, restored afterwards."""
    emulator.load_rules(emulator_host, PROJECT, RULES)
    try:
        yield emulator_host
    finally:
        emulator.load_rules(emulator_host, PROJECT, RULES)


@pytest.fixture
def world(client: FlaskClient, db: firestore.Client) -> World:
    """Two users, a deleted one and their claims, tombstone and event log, all written by the function."""
    owner, other, deleted = new_user_id(), new_user_id(), new_user_id()
    owner_event = _deliver(client, user_event("user.created", owner, emails=["Owner@Example.com"]))
    _deliver(client, user_event("user.created", other, emails=["other@example.com"]))
    _deliver(client, user_event("user.created", deleted, emails=["gone@example.com"]))
    _deliver(client, deletion_event(deleted))
    # Data the function never writes: a collection nobody wrote rules for, and a subcollection.
    db.collection(UNMENTIONED).document(owner).set({"clerk_id": owner})
    db.collection(PATHS.users).document(owner).collection("private").document("notes").set({"clerk_id": owner})
    built = World(
        owner=owner,
        other=other,
        deleted=deleted,
        stranger=new_user_id(),
        owner_claim=_claim_id("Owner@Example.com"),
        other_claim=_claim_id("other@example.com"),
        owner_event=event_log.record_id(owner_event),
    )
    # Every denial below must be a denial of a real document, not a miss.
    for path in (
        f"{PATHS.users}/{owner}",
        f"{PATHS.users}/{other}",
        f"{PATHS.claims}/{built.owner_claim}",
        f"{PATHS.claims}/{built.other_claim}",
        f"{PATHS.user_tombstones}/{deleted}",
        f"{PATHS.events}/{built.owner_event}",
    ):
        assert db.document(path).get(timeout=10).exists, path
    return built


def test_owner_gets_own_user_document_written_by_the_function(rules_host: str, world: World) -> None:
    check = reads_of_users(world)[0]

    status, answer = call(rules_host, check)

    assert status == 200
    assert isinstance(answer, dict)
    assert answer["name"] == f"{DOCUMENTS}/users/{world.owner}"
    assert answer["fields"]["email"]["stringValue"] == "Owner@Example.com"
    assert "private_metadata" not in answer["fields"]


def test_only_the_owner_can_get_a_user_document(rules_host: str, world: World) -> None:
    assert evaluate(rules_host, reads_of_users(world)) == []


def test_nobody_can_list_or_query_users(rules_host: str, world: World) -> None:
    assert evaluate(rules_host, listing_of_users(world)) == []


def test_clients_cannot_create_update_or_delete_user_documents(
    rules_host: str, world: World, db: firestore.Client
) -> None:
    before = snapshot_all(db)

    failures = evaluate(rules_host, writes_of_users(world))

    assert failures == []
    assert snapshot_all(db) == before


def test_claims_tombstones_event_log_and_unmentioned_collections_are_closed(
    rules_host: str, world: World, db: firestore.Client
) -> None:
    before = snapshot_all(db)

    failures = evaluate(rules_host, internal_collections(world))

    assert failures == []
    assert snapshot_all(db) == before
    assert db.collection(UNMENTIONED).document(world.owner).get(timeout=10).to_dict() == {"clerk_id": world.owner}


# Each variant is a plausible mistake; the matrix must notice every one of them.
USERS_GET = "allow get: if clerkSyncSessionLive() && request.auth.uid == userId"
OPENED_VARIANTS = {
    "read instead of get on users": (
        USERS_GET,
        USERS_GET.replace("allow get", "allow read"),
        "owner queries users where the document id is own id",
    ),
    "signed-in users read (and list) users": (
        USERS_GET,
        "allow read: if request.auth != null || request.auth.uid == userId",
        "owner lists users",
    ),
    "any signed-in user gets any user": (
        USERS_GET,
        "allow get: if request.auth != null || request.auth.uid == userId",
        "other user gets owner's document",
    ),
    "owner may write own user document": (
        "allow list, write: if false;",
        "allow list: if false;\n      allow write: if request.auth.uid == userId;",
        "owner updates own user document",
    ),
    "claims readable by anyone": (
        "    match /{document=**} {",
        "    match /email_claims/{email} {\n      allow read: if true;\n    }\n\n    match /{document=**} {",
        "signed out gets email_claims/",
    ),
    "catch-all open to signed-in users": (
        "allow read, write: if false;",
        "allow read, write: if request.auth != null;",
        "owner gets webhook_events/",
    ),
}


@pytest.mark.parametrize("variant", sorted(OPENED_VARIANTS))
def test_matrix_catches_rules_that_open_access(rules_host: str, world: World, variant: str) -> None:
    original, opened, expected_failure = OPENED_VARIANTS[variant]
    assert original in RULES, f"variant {variant!r} no longer applies to firestore.rules; update it"
    emulator.load_rules(rules_host, PROJECT, RULES.replace(original, opened, 1))  # the first: users

    failures = evaluate(rules_host, matrix(world))

    assert failures, f"the matrix passed rules with {variant}"
    assert any(problem.startswith(expected_failure) for problem in failures), failures


def test_whole_matrix_holds_once_the_real_rules_are_loaded_again(rules_host: str, world: World) -> None:
    emulator.load_rules(rules_host, PROJECT, RULES.replace("if false", "if true"))
    emulator.load_rules(rules_host, PROJECT, RULES)

    assert evaluate(rules_host, matrix(world)) == []

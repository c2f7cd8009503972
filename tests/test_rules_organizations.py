"""Organization rules over the emulator's REST API: members read their organization and its members,
a user lists their own memberships across organizations, nobody else reads anything there.

Membership documents decide, not the `org_id` claim a token carries (it can lag a removal by up to
the token's hour): a token claiming an organization its user is not a member of reads nothing.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import emulator
import pytest
from clerk_events import (
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_deletion_event,
    organization_event,
    signed_headers,
    user_event,
)
from conftest import PATHS, PROJECT, ROOT
from flask.testing import FlaskClient
from google.cloud import firestore

from tools import rules

RULES = (ROOT / "firestore.rules").read_text()
DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
LIVE_SESSION = "sess_live0000000000000000000000"  # never ended in these tests
TIMEOUT_SECONDS = 10


def _base64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str, **claims: Any) -> str:
    """An unsigned Firebase ID token for `uid` (with developer claims); the emulator trusts it."""
    now = int(time.time())
    payload = {
        "sub": uid,
        "user_id": uid,
        "aud": PROJECT,
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
        "clerk_sid": LIVE_SESSION,  # as firebase_token puts it in every custom token
        **claims,
    }
    return f"{_base64url({'alg': 'none', 'typ': 'JWT'})}.{_base64url(payload)}."


def rest(
    host: str, method: str, path: str, uid: str | None, body: dict[str, Any] | None = None, **claims: Any
) -> tuple[int, Any]:
    """One client request; its status and decoded JSON."""
    url = f"http://{host}/v1/{DOCUMENTS}" + (path if path.startswith(":") else f"/{path}")
    headers = {"Content-Type": "application/json"}
    if uid is not None:
        headers["Authorization"] = f"Bearer {id_token(uid, **claims)}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def memberships_of(user_id: str, *, all_descendants: bool = True, where_user: bool = True) -> dict[str, Any]:
    """The collection-group query an app runs for the signed-in user's memberships."""
    query: dict[str, Any] = {"from": [{"collectionId": "memberships", "allDescendants": all_descendants}]}
    if where_user:
        query["where"] = {
            "fieldFilter": {"field": {"fieldPath": "user_id"}, "op": "EQUAL", "value": {"stringValue": user_id}}
        }
    return {"structuredQuery": query}


def denied(answer: tuple[int, Any]) -> bool:
    status, body = answer
    return status == 403 and isinstance(body, dict) and body.get("error", {}).get("status") == "PERMISSION_DENIED"


def ids_in(answer: tuple[int, Any]) -> list[str]:
    """Document ids a list or a query returned."""
    status, body = answer
    assert status == 200, body
    documents = body.get("documents", []) if isinstance(body, dict) else [row.get("document") for row in body]
    return sorted(document["name"].rsplit("/", 1)[-1] for document in documents if document)


@dataclass(frozen=True)
class Orgs:
    """Written by the function: Ada and Bob in Acme, Cy in Beta, Ada once in Gone (deleted)."""

    acme: str
    beta: str
    gone: str
    ada: str
    bob: str
    cy: str
    stranger: str


def _deliver(client: FlaskClient, body: str) -> None:
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
def orgs(client: FlaskClient, db: firestore.Client) -> Orgs:
    world = Orgs(
        acme=new_organization_id(),
        beta=new_organization_id(),
        gone=new_organization_id(),
        ada=new_user_id(),
        bob=new_user_id(),
        cy=new_user_id(),
        stranger=new_user_id(),
    )
    for organization_id in (world.acme, world.beta, world.gone):
        _deliver(client, organization_event("organization.created", organization_id))
    for user_id in (world.ada, world.bob, world.cy):
        _deliver(client, user_event("user.created", user_id, emails=[f"{user_id}@example.com"]))
    for organization_id, user_id in ((world.acme, world.ada), (world.acme, world.bob), (world.beta, world.cy)):
        _deliver(
            client, membership_event("organizationMembership.created", new_membership_id(), organization_id, user_id)
        )
    _deliver(client, membership_event("organizationMembership.created", new_membership_id(), world.gone, world.ada))
    _deliver(client, organization_deletion_event(world.gone))
    db.collection("teams/t1/memberships").document(world.ada).set({"user_id": world.ada}, timeout=TIMEOUT_SECONDS)
    return world


def test_a_member_gets_their_organization_and_nobody_else_does(rules_host: str, orgs: Orgs) -> None:
    acme = f"{PATHS.organizations}/{orgs.acme}"

    assert rest(rules_host, "GET", acme, orgs.ada)[0] == 200
    assert rest(rules_host, "GET", f"{PATHS.organizations}/{orgs.beta}", orgs.cy)[0] == 200
    assert denied(rest(rules_host, "GET", f"{PATHS.organizations}/{orgs.beta}", orgs.ada))
    assert denied(rest(rules_host, "GET", acme, orgs.cy))
    assert denied(rest(rules_host, "GET", acme, orgs.stranger))
    assert denied(rest(rules_host, "GET", acme, None))
    assert denied(rest(rules_host, "GET", PATHS.organizations, orgs.ada))  # no listing of organizations


def test_members_read_their_organizations_members_and_outsiders_do_not(rules_host: str, orgs: Orgs) -> None:
    members = PATHS.memberships(orgs.acme)

    assert ids_in(rest(rules_host, "GET", members, orgs.bob)) == sorted([orgs.ada, orgs.bob])
    assert rest(rules_host, "GET", f"{members}/{orgs.ada}", orgs.bob)[0] == 200
    assert denied(rest(rules_host, "GET", members, orgs.cy))
    assert denied(rest(rules_host, "GET", f"{members}/{orgs.ada}", orgs.cy))
    assert denied(rest(rules_host, "GET", f"{members}/{orgs.ada}", None))


def test_a_user_lists_their_own_memberships_across_organizations_only(rules_host: str, orgs: Orgs) -> None:
    own = rest(rules_host, "POST", ":runQuery", orgs.ada, memberships_of(orgs.ada))

    paths = sorted(row["document"]["name"].split("/documents/")[1] for row in own[1] if "document" in row)
    assert own[0] == 200
    # Gone's membership was swept. A `memberships` collection of the app's own (teams/t1/...) answers the
    # same collection-group query for the user's own documents: rules cannot tell the two apart.
    assert paths == [f"{PATHS.memberships(orgs.acme)}/{orgs.ada}", f"teams/t1/memberships/{orgs.ada}"]
    assert denied(rest(rules_host, "POST", ":runQuery", orgs.ada, memberships_of(orgs.cy)))
    assert denied(rest(rules_host, "POST", ":runQuery", orgs.ada, memberships_of(orgs.ada, where_user=False)))
    assert denied(rest(rules_host, "POST", ":runQuery", None, memberships_of(orgs.ada)))


def test_the_org_id_claim_of_a_token_grants_nothing_the_memberships_do_not(rules_host: str, orgs: Orgs) -> None:
    beta = f"{PATHS.organizations}/{orgs.beta}"

    assert denied(rest(rules_host, "GET", beta, orgs.ada, org_id=orgs.beta, org_role="admin"))
    assert denied(rest(rules_host, "GET", PATHS.memberships(orgs.beta), orgs.ada, org_id=orgs.beta))


def test_leaving_an_organization_ends_its_reads_at_once(rules_host: str, orgs: Orgs, client: FlaskClient) -> None:
    acme = f"{PATHS.organizations}/{orgs.acme}"
    assert rest(rules_host, "GET", acme, orgs.bob)[0] == 200
    membership = rest(rules_host, "GET", f"{PATHS.memberships(orgs.acme)}/{orgs.bob}", orgs.bob)[1]
    membership_id = membership["fields"]["membership_id"]["stringValue"]

    _deliver(client, membership_event("organizationMembership.deleted", membership_id, orgs.acme, orgs.bob))

    assert denied(rest(rules_host, "GET", acme, orgs.bob, org_id=orgs.acme))


def test_no_client_writes_organizations_memberships_or_their_tombstones(rules_host: str, orgs: Orgs) -> None:
    fields = {"fields": {"name": {"stringValue": "forged"}}}
    acme = f"{PATHS.organizations}/{orgs.acme}"
    own = f"{PATHS.memberships(orgs.acme)}/{orgs.ada}"
    writes = [
        ("PATCH", acme, fields),
        ("DELETE", acme, None),
        ("PATCH", own, {"fields": {"role": {"stringValue": "org:admin"}}}),
        ("DELETE", own, None),
        ("PATCH", f"{PATHS.memberships(orgs.beta)}/{orgs.ada}", fields),
    ]
    reads = [f"{PATHS.organization_tombstones}/{orgs.gone}", PATHS.membership_tombstones]

    assert all(denied(rest(rules_host, method, path, orgs.ada, body)) for method, path, body in writes)
    assert all(denied(rest(rules_host, "GET", path, orgs.ada)) for path in reads)


def test_the_block_merged_into_an_apps_own_rules_keeps_both_working(
    rules_host: str, orgs: Orgs, db: firestore.Client
) -> None:
    app_rules = (
        "rules_version = '2';\nservice cloud.firestore {\n  match /databases/{database}/documents {\n"
        "    match /app_settings/{doc} {\n      allow read: if request.auth != null;\n    }\n"
        + rules.block(PATHS)
        + "  }\n}\n"
    )
    db.collection("app_settings").document("theme").set({"dark": True}, timeout=TIMEOUT_SECONDS)
    emulator.load_rules(rules_host, PROJECT, app_rules)

    assert rest(rules_host, "GET", "app_settings/theme", orgs.cy)[0] == 200
    assert rest(rules_host, "GET", f"{PATHS.users}/{orgs.ada}", orgs.ada)[0] == 200
    assert denied(rest(rules_host, "GET", f"{PATHS.users}/{orgs.ada}", orgs.cy))
    assert rest(rules_host, "GET", f"{PATHS.organizations}/{orgs.acme}", orgs.ada)[0] == 200
    assert denied(rest(rules_host, "GET", f"{PATHS.organizations}/{orgs.acme}", orgs.cy))
    assert denied(rest(rules_host, "GET", f"{PATHS.claims}/{orgs.ada}%40example.com", orgs.ada))


@pytest.mark.parametrize(
    ("original", "opened"),
    [
        ("allow get: if clerkSyncMember(orgId);", "allow get: if request.auth != null;"),
        ("allow read: if clerkSyncMember(orgId);", "allow read: if request.auth != null;"),
        (
            "allow list: if resource.data.user_id == request.auth.uid && clerkSyncReader();",
            "allow list: if request.auth != null;",
        ),
    ],
    ids=["any_user_gets_organizations", "any_user_reads_members", "collection_group_open"],
)
def test_these_tests_notice_rules_that_open_organizations(
    rules_host: str, orgs: Orgs, original: str, opened: str
) -> None:
    assert original in RULES
    emulator.load_rules(rules_host, PROJECT, RULES.replace(original, opened))

    leaks = [
        rest(rules_host, "GET", f"{PATHS.organizations}/{orgs.acme}", orgs.cy),
        rest(rules_host, "GET", PATHS.memberships(orgs.acme), orgs.cy),
        rest(rules_host, "POST", ":runQuery", orgs.cy, memberships_of(orgs.ada)),
    ]

    assert any(status == 200 for status, _ in leaks)

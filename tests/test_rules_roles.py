"""`clerkSyncHasPermission` over the emulator's REST API, on data the webhook wrote: what a member may do
in an app's own collection follows Clerk's roles at once (a role's change, a permission's rename or
deletion, a role's deletion), whatever the membership documents still say, and costs 4 or 5 reads.

The app's own rule is `allow get: if clerkSyncHasPermission(resource.data.orgId, 'org:posts:edit')`
on `app_posts/{postId}`. Each part of the helpers is shown to matter: a copy of the rules without it
answers some request of the matrix wrongly.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import emulator
import pytest
from billing_events import payment_data, payment_event
from clerk_events import (
    BASE_MS,
    deleted_object_event,
    invitation_event,
    membership_event,
    new_invitation_id,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_permission_id,
    new_role_id,
    new_user_id,
    organization_event,
    permission_data,
    permission_event,
    role_event,
    session_event,
    signed_headers,
    user_event,
)
from clerk_sessions import new_session_id
from conftest import PATHS, PROJECT
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import billing
from tools import rules

DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
TIMEOUT_SECONDS = 10
POSTS = "app_posts"
PROBES = "app_probes"
EDIT = "org:posts:edit"
MANAGE = "org:sys_memberships:manage"


def app_rules(condition: str = f"clerkSyncHasPermission(resource.data.orgId, '{EDIT}')", block: str = "") -> str:
    """The sync's block merged into an app's rules whose own collection asks for a permission."""
    return (
        "rules_version = '2';\nservice cloud.firestore {\n  match /databases/{database}/documents {\n"
        + (block or rules.block(PATHS))
        + f"    match /{POSTS}/{{postId}} {{\n      allow get: if {condition};\n    }}\n"
        + "  }\n}\n"
    )


RULES = app_rules()


def _base64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str, session_id: str) -> str:
    """An unsigned Firebase ID token as firebase_token's custom token makes it."""
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
        "clerk_sid": session_id,
    }
    return f"{_base64url({'alg': 'none', 'typ': 'JWT'})}.{_base64url(payload)}."


@dataclass(frozen=True)
class Reader:
    """A signed-in client: whose, and from which Clerk session."""

    name: str
    uid: str
    session_id: str


def get(host: str, path: str, reader: Reader | None) -> int:
    """The status of one client `get` (or list) of `path`."""
    headers = {"Authorization": f"Bearer {id_token(reader.uid, reader.session_id)}"} if reader else {}
    request = urllib.request.Request(f"http://{host}/v1/{DOCUMENTS}/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def write(host: str, path: str, reader: Reader) -> int:
    """The status of one client write of `path`."""
    body = json.dumps({"fields": {"permissions": {"arrayValue": {"values": [{"stringValue": EDIT}]}}}}).encode()
    headers = {"Authorization": f"Bearer {id_token(reader.uid, reader.session_id)}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://{host}/v1/{DOCUMENTS}/{path}", data=body, method="PATCH", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def deliver(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    assert response.status_code == 200, response.get_json()


@dataclass(frozen=True)
class World:
    """One organization and its members in every state a permission check meets, all from the webhook."""

    org: str
    post: str  # app_posts/{post}, orgId = org
    editor_role: str
    edit_permission: str
    readers: dict[str, Reader]
    editor_membership: str


@pytest.fixture
def rules_host(emulator_host: str) -> str:
    emulator.load_rules(emulator_host, PROJECT, RULES)
    return emulator_host


@pytest.fixture
def world(client: FlaskClient, db: firestore.Client) -> World:
    org, post = new_organization_id(), "post_1"
    editor_role, admin_role, viewer_role = new_role_id(), new_role_id(), new_role_id()
    edit, read, manage = new_permission_id(), new_permission_id(), new_permission_id()
    names = ("admin", "editor", "viewer", "early", "unknown_role", "banned_admin", "ended_admin", "stranger")
    uid = {name: new_user_id() for name in names}
    sessions = {name: new_session_id() for name in names}
    deliver(client, organization_event("organization.created", org))
    for name in names:
        deliver(client, user_event("user.created", uid[name], emails=[f"{uid[name].lower()}@example.com"]))
    # A member whose role arrives after the membership (it names the role by key only).
    early = new_membership_id()
    deliver(client, membership_event("organizationMembership.created", early, org, uid["early"], role="org:editor"))
    deliver(
        client,
        role_event(
            "role.created",
            admin_role,
            "org:admin",
            [permission_data(edit, EDIT), permission_data(manage, MANAGE), permission_data(read, "org:posts:read")],
        ),
    )
    deliver(client, role_event("role.created", editor_role, "org:editor", [permission_data(edit, EDIT)]))
    deliver(client, role_event("role.created", viewer_role, "org:viewer", [permission_data(read, "org:posts:read")]))
    members = {
        "admin": "org:admin",
        "editor": "org:editor",
        "viewer": "org:viewer",
        "unknown_role": "org:legacy",  # no role by that key: the membership's own list decides
        "banned_admin": "org:admin",
        "ended_admin": "org:admin",
    }
    membership_ids = {}
    for name, key in members.items():
        membership_ids[name] = new_membership_id()
        permissions = [EDIT] if name == "unknown_role" else ["org:sys_memberships:read"]
        deliver(
            client,
            membership_event(
                "organizationMembership.created",
                membership_ids[name],
                org,
                uid[name],
                role=key,
                permissions=permissions,
            ),
        )
    banned_email = f"{uid['banned_admin'].lower()}@example.com"
    deliver(
        client, user_event("user.updated", uid["banned_admin"], emails=[banned_email], banned=True, updated_at=2**41)
    )
    deliver(client, session_event("session.ended", sessions["ended_admin"], uid["ended_admin"]))
    db.collection(POSTS).document(post).set({"orgId": org, "title": "Launch"}, timeout=TIMEOUT_SECONDS)
    return World(
        org=org,
        post=post,
        editor_role=editor_role,
        edit_permission=edit,
        readers={name: Reader(name, uid[name], sessions[name]) for name in names},
        editor_membership=membership_ids["editor"],
    )


def who_gets_the_post(host: str, world: World) -> set[str]:
    """The names of the readers the loaded rules let get the app's post."""
    return {name for name, reader in world.readers.items() if get(host, f"{POSTS}/{world.post}", reader) == 200}


def test_a_permission_is_granted_by_the_members_role_as_the_sync_knows_it(rules_host: str, world: World) -> None:
    assert who_gets_the_post(rules_host, world) == {"admin", "editor", "early", "unknown_role"}
    assert get(rules_host, f"{POSTS}/{world.post}", None) == 403


def test_a_roles_change_reaches_every_member_at_once(rules_host: str, world: World, client: FlaskClient) -> None:
    deliver(client, role_event("role.updated", world.editor_role, "org:editor", [], updated_at=BASE_MS + 1))
    taken_away = who_gets_the_post(rules_host, world)
    edit = permission_data(world.edit_permission, EDIT)
    deliver(client, role_event("role.updated", world.editor_role, "org:editor", [edit], updated_at=BASE_MS + 2))

    assert taken_away == {"admin", "unknown_role"}  # editors, early or not, lost it with the role
    assert who_gets_the_post(rules_host, world) == {"admin", "editor", "early", "unknown_role"}


def test_a_membership_event_carrying_old_permissions_after_a_roles_change_grants_nothing_old(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    deliver(client, role_event("role.updated", world.editor_role, "org:editor", [], updated_at=BASE_MS + 1))
    editor = world.readers["editor"]
    deliver(
        client,
        membership_event(
            "organizationMembership.updated",
            world.editor_membership,
            world.org,
            editor.uid,
            role="org:editor",
            permissions=[EDIT],  # Clerk's list from before the role changed, delivered late
            updated_at=BASE_MS + 5,
        ),
    )

    assert "editor" not in who_gets_the_post(rules_host, world)


def test_a_deleted_or_renamed_permission_grants_nothing_under_its_old_key(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    deliver(
        client,
        permission_event("permission.updated", world.edit_permission, "org:articles:edit", updated_at=BASE_MS + 1),
    )
    renamed = who_gets_the_post(rules_host, world)
    deliver(client, permission_event("permission.updated", world.edit_permission, EDIT, updated_at=BASE_MS + 2))
    restored = who_gets_the_post(rules_host, world)
    deliver(client, deleted_object_event("permission.deleted", "permission", world.edit_permission))

    assert renamed == {"unknown_role"}
    assert restored == {"admin", "editor", "early", "unknown_role"}
    assert who_gets_the_post(rules_host, world) == {"unknown_role"}


def test_a_deleted_role_grants_nothing_to_a_member_still_carrying_it(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    deliver(client, deleted_object_event("role.deleted", "role", world.editor_role))

    assert who_gets_the_post(rules_host, world) == {"admin", "unknown_role"}


def test_pending_invitations_are_read_by_members_who_manage_members_only(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    invitation = new_invitation_id()
    deliver(client, invitation_event("organizationInvitation.created", invitation, world.org))
    path = f"{PATHS.invitations(world.org)}/{invitation}"

    allowed = {name for name, reader in world.readers.items() if get(rules_host, path, reader) == 200}
    listed = {
        name for name, reader in world.readers.items() if get(rules_host, PATHS.invitations(world.org), reader) == 200
    }

    assert allowed == listed == {"admin"}
    assert write(rules_host, path, world.readers["admin"]) == 403


def test_roles_and_permissions_are_read_by_users_the_sync_lets_in_and_written_by_nobody(
    rules_host: str, world: World
) -> None:
    paths = [
        f"{PATHS.roles}/{world.editor_role}",
        f"{PATHS.role_keys}/org:editor",
        f"{PATHS.permissions}/{world.edit_permission}",
        PATHS.roles,
    ]
    viewer, stranger, banned = (world.readers[name] for name in ("viewer", "stranger", "banned_admin"))

    assert [get(rules_host, path, viewer) for path in paths[:2] + paths[3:]] == [200, 200, 200]
    assert get(rules_host, f"{PATHS.roles}/{world.editor_role}", stranger) == 200  # a user, in no organization
    assert {get(rules_host, path, banned) for path in paths} == {403}
    assert {get(rules_host, path, None) for path in paths} == {403}
    assert write(rules_host, f"{PATHS.roles}/{world.editor_role}", world.readers["admin"]) == 403
    assert write(rules_host, f"{PATHS.role_keys}/org:viewer", world.readers["viewer"]) == 403


def reads_used(
    host: str,
    world: World,
    db: firestore.Client,
    reader: Reader,
    check: str = f"clerkSyncHasPermission(resource.data.orgId, '{EDIT}')",
) -> int:
    """The documents one evaluation of `check` reads, measured against the emulator's limit of 10 per
    single-document request: the most extra reads the rule still takes, from 10."""
    for index in range(10):
        db.collection(PROBES).document(f"p{index}").set({"ok": True}, timeout=TIMEOUT_SECONDS)
    room = -1
    for extra in range(11):
        probes = "".join(
            f" && get(/databases/$(database)/documents/{PROBES}/p{index}).data.ok" for index in range(extra)
        )
        emulator.load_rules(host, PROJECT, app_rules(f"{check}{probes}"))
        if get(host, f"{POSTS}/{world.post}", reader) != 200:
            break
        room = extra
    emulator.load_rules(host, PROJECT, RULES)
    return 10 - room


def test_a_permission_check_reads_4_documents_or_6_for_a_member_stored_before_its_role(
    rules_host: str, world: World, db: firestore.Client
) -> None:
    by_id = reads_used(rules_host, world, db, world.readers["editor"])
    by_key = reads_used(rules_host, world, db, world.readers["early"])
    own_list = reads_used(rules_host, world, db, world.readers["unknown_role"])
    billing_admin = reads_used(
        rules_host, world, db, world.readers["admin"], "clerkSyncBillingReader(resource.data.orgId)"
    )

    assert (by_id, by_key, own_list) == (4, 6, 4)
    assert billing_admin == 3  # billing's payments: an admin needs no role read


def _loosened(original: str, loosened: str) -> str:
    block = rules.block(PATHS)
    assert original in block, f"{original!r} is no longer in the rules block: update the variant"
    return app_rules(block=block.replace(original, loosened))


ROLE = f"/databases/$(database)/documents/{PATHS.roles}/$(member.role_id)"
BY_ID = (
    "return member.get('role_id', null) is string\n"
    f"        ? permission in get({ROLE}).data.get('permissions', [])\n"
    "        : clerkSyncKeyGrants(member, permission);"
)
LOOSENED = {
    "the membership's own list decides": (BY_ID, "return permission in member.get('permissions', []);"),
    "a missing role falls back to the membership's own list": (
        BY_ID,
        f"return member.get('role_id', null) is string && exists({ROLE})\n"
        f"        ? permission in get({ROLE}).data.get('permissions', [])\n"
        "        : permission in member.get('permissions', []);",
    ),
    "the role's id is not followed, only its key": (BY_ID, "return clerkSyncKeyGrants(member, permission);"),
    "the key is not followed": (
        f"return exists(/databases/$(database)/documents/{PATHS.role_keys}/",
        f"return false && exists(/databases/$(database)/documents/{PATHS.role_keys}/",
    ),
    "users the sync keeps out are not refused": (
        "return clerkSyncReader()\n        && clerkSyncGrants(",
        "return request.auth != null\n        && clerkSyncGrants(",
    ),
}


@pytest.mark.parametrize("variant", sorted(LOOSENED))
def test_the_checks_notice_helpers_with_a_part_left_out(
    rules_host: str, world: World, client: FlaskClient, variant: str
) -> None:
    org, members = world.org, {}
    # The states where each part matters: the editor role lost the permission and the editor's
    # membership was delivered late with Clerk's old list; a writer's role moved to another key and a
    # new role granting the permission took the old one; a role was deleted under a member whose list
    # still grants the permission; a publisher joined before the role granting it was stored.
    deliver(client, role_event("role.updated", world.editor_role, "org:editor", [], updated_at=BASE_MS + 1))
    editor = world.readers["editor"]
    deliver(
        client,
        membership_event(
            "organizationMembership.updated",
            world.editor_membership,
            org,
            editor.uid,
            role="org:editor",
            permissions=[EDIT],
            updated_at=BASE_MS + 5,
        ),
    )
    writer_role, taker_role, gone_role = new_role_id(), new_role_id(), new_role_id()
    deliver(client, role_event("role.created", writer_role, "org:writer", updated_at=BASE_MS))
    deliver(client, role_event("role.created", gone_role, "org:temporary", updated_at=BASE_MS))
    for name, key, listed in (
        ("writer", "org:writer", [EDIT]),
        ("orphan", "org:temporary", [EDIT]),
        ("publisher", "org:publisher", []),
    ):
        members[name] = Reader(name, new_user_id(), new_session_id())
        email = f"{members[name].uid.lower()}@example.com"
        deliver(client, user_event("user.created", members[name].uid, emails=[email]))
        joined = new_membership_id()
        deliver(
            client,
            membership_event(
                "organizationMembership.created", joined, org, members[name].uid, role=key, permissions=listed
            ),
        )
    deliver(client, role_event("role.updated", writer_role, "org:author", updated_at=BASE_MS + 1))
    edit = permission_data(world.edit_permission, EDIT)
    deliver(client, role_event("role.created", taker_role, "org:writer", [edit], updated_at=BASE_MS + 2))
    deliver(client, role_event("role.created", new_role_id(), "org:publisher", [edit], updated_at=BASE_MS))
    deliver(client, deleted_object_event("role.deleted", "role", gone_role))
    everyone = World(
        org, world.post, world.editor_role, world.edit_permission, {**world.readers, **members}, world.editor_membership
    )
    right = {"admin", "unknown_role", "publisher"}
    assert who_gets_the_post(rules_host, everyone) == right  # the real rules

    emulator.load_rules(rules_host, PROJECT, _loosened(*LOOSENED[variant]))

    assert who_gets_the_post(rules_host, everyone) != right, variant


def test_an_organizations_payments_follow_the_billing_readers_role_not_their_membership_list(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    """Billing's rule asks the role too: a role losing `org:sys_billing:read` ends its members' reads at once."""
    billing_role, read_billing = new_role_id(), new_permission_id()
    accountant = Reader("accountant", new_user_id(), new_session_id())
    deliver(client, user_event("user.created", accountant.uid, emails=[f"{accountant.uid.lower()}@example.com"]))
    granted = [permission_data(read_billing, "org:sys_billing:read")]
    deliver(client, role_event("role.created", billing_role, "org:accountant", granted))
    listed = ["org:sys_memberships:read", "org:sys_billing:read"]
    membership = membership_event(
        "organizationMembership.created", new_membership_id(), world.org, accountant.uid, role="org:accountant",
        permissions=listed,
    )  # fmt: skip
    deliver(client, membership)
    deliver(client, payment_event("paymentAttempt.updated", payment_data("cpa_roles", "organization", world.org)))
    payment = f"{billing.payments_collection(PATHS, 'organization', world.org)}/cpa_roles"

    while_granted = get(rules_host, payment, accountant)
    deliver(client, role_event("role.updated", billing_role, "org:accountant", [], updated_at=BASE_MS + 1))

    assert while_granted == 200
    assert get(rules_host, payment, accountant) == 403  # the membership still lists it; the role does not
    assert get(rules_host, payment, world.readers["admin"]) == 200
    assert get(rules_host, payment, world.readers["viewer"]) == 403

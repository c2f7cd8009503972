"""Roles and permissions: what a role grants stays what Clerk says, through role changes, permission
renames and deletions, role deletions and membership events, in any order and delivered twice.

The rules read what a member may do from the role's document (test_rules_roles.py), so these tests
hold that document, and the key's document that leads to it, to Clerk's state.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from clerk_events import (
    BASE_MS,
    deleted_object_event,
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_permission_id,
    new_role_id,
    new_user_id,
    permission_data,
    permission_event,
    role_event,
    signed_headers,
)
from conftest import PATHS, apply_event, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import events, permissions, roles
from clerk_sync.outcome import FollowUpFailed, Outcome, StoreUnavailable
from clerk_sync.payload import MalformedEvent

TIMEOUT_SECONDS = 10


def deliver(db: firestore.Client, body: str, message_id: str | None = None) -> Outcome:
    return apply_event(db, message_id or new_message_id(), events.parse_event(body.encode()))


def role(db: firestore.Client, role_id: str) -> dict[str, Any] | None:
    return db.collection(PATHS.roles).document(role_id).get(timeout=TIMEOUT_SECONDS).to_dict()


def granted(db: firestore.Client, role_id: str) -> list[str] | None:
    found = role(db, role_id)
    return None if found is None else found["permissions"]


def key_holder(db: firestore.Client, key: str) -> str | None:
    found = db.collection(PATHS.role_keys).document(key).get(timeout=TIMEOUT_SECONDS).to_dict()
    return None if found is None else found["role_id"]


def test_a_role_is_stored_with_what_it_grants_and_its_key_names_it(db: firestore.Client) -> None:
    role_id, edit, publish = new_role_id(), new_permission_id(), new_permission_id()
    carried = [permission_data(edit, "org:posts:edit"), permission_data(publish, "org:posts:publish")]

    outcome = deliver(db, role_event("role.created", role_id, "org:editor", carried))

    stored = role(db, role_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert stored["permissions"] == ["org:posts:edit", "org:posts:publish"]
    assert stored["permission_ids"] == [edit, publish]
    assert (stored["key"], stored["name"], stored["clerk_id"]) == ("org:editor", "Editor", role_id)
    assert key_holder(db, "org:editor") == role_id


def test_an_older_role_event_is_stale_and_a_deleted_role_stays_deleted(db: firestore.Client) -> None:
    role_id, edit, publish = new_role_id(), new_permission_id(), new_permission_id()
    both = [permission_data(edit, "org:posts:edit"), permission_data(publish, "org:posts:publish")]
    deliver(db, role_event("role.updated", role_id, "org:editor", both, updated_at=BASE_MS + 10))

    older = deliver(db, role_event("role.updated", role_id, "org:editor", both[:1], updated_at=BASE_MS + 5))
    kept = granted(db, role_id)
    deleted = deliver(db, deleted_object_event("role.deleted", "role", role_id))
    after = deliver(db, role_event("role.updated", role_id, "org:editor", both, updated_at=BASE_MS + 99))

    assert (older, deleted, after) == (Outcome.STALE, Outcome.APPLIED, Outcome.STALE)
    assert kept == ["org:posts:edit", "org:posts:publish"]
    assert role(db, role_id) is None
    # The key still names the deleted role, so a member still carrying the key is granted nothing.
    assert key_holder(db, "org:editor") == role_id


def test_a_renamed_key_keeps_naming_its_role_for_members_that_still_carry_it(db: firestore.Client) -> None:
    role_id = new_role_id()
    deliver(db, role_event("role.created", role_id, "org:writer", updated_at=BASE_MS))

    deliver(db, role_event("role.updated", role_id, "org:author", updated_at=BASE_MS + 1))

    assert (key_holder(db, "org:writer"), key_holder(db, "org:author")) == (role_id, role_id)
    assert (role(db, role_id) or {})["key"] == "org:author"


def test_a_key_given_up_and_taken_by_another_role_is_the_newer_roles_in_either_order(db: firestore.Client) -> None:
    for order in ((0, 1, 2), (0, 2, 1), (2, 0, 1), (2, 1, 0)):
        first, second, key, other_key = new_role_id(), new_role_id(), f"org:k{new_role_id()}", f"org:o{new_role_id()}"
        history = [
            role_event("role.created", first, key, updated_at=BASE_MS),
            role_event("role.updated", first, other_key, updated_at=BASE_MS + 1),  # gives the key up
            role_event("role.created", second, key, updated_at=BASE_MS + 2),  # takes it
        ]
        for index in order:
            deliver(db, history[index])

        assert (key_holder(db, key), key_holder(db, other_key)) == (second, first), order


def test_a_permissions_new_key_reaches_every_role_that_holds_it(db: firestore.Client) -> None:
    edit, other = new_permission_id(), new_permission_id()
    holders = [new_role_id() for _ in range(3)]
    bystander = new_role_id()
    for role_id in holders:
        deliver(db, role_event("role.created", role_id, f"org:r{role_id}", [permission_data(edit, "org:posts:edit")]))
    deliver(db, role_event("role.created", bystander, "org:bystander", [permission_data(other, "org:other:read")]))
    deliver(db, permission_event("permission.created", edit, "org:posts:edit"))

    renamed = deliver(db, permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 5))

    assert renamed is Outcome.APPLIED
    assert [granted(db, role_id) for role_id in holders] == [["org:articles:edit"]] * 3
    assert granted(db, bystander) == ["org:other:read"]


def test_a_role_event_carrying_a_permissions_old_key_after_its_rename_grants_the_new_key(db: firestore.Client) -> None:
    role_id, edit = new_role_id(), new_permission_id()
    deliver(db, permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 5))

    deliver(db, role_event("role.updated", role_id, "org:editor", [permission_data(edit, "org:posts:edit")]))

    assert granted(db, role_id) == ["org:articles:edit"]


def test_a_role_event_carrying_a_newer_key_than_the_permissions_document_grants_the_newer(db: firestore.Client) -> None:
    role_id, edit = new_role_id(), new_permission_id()
    deliver(db, permission_event("permission.created", edit, "org:posts:edit", updated_at=BASE_MS))
    newer = permission_data(edit, "org:articles:edit", updated_at=BASE_MS + 5)  # its permission.updated is late

    deliver(db, role_event("role.updated", role_id, "org:editor", [newer]))
    deliver(db, permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 5))

    assert granted(db, role_id) == ["org:articles:edit"]


def test_a_deleted_permission_leaves_every_role_and_a_late_role_event_does_not_bring_it_back(
    db: firestore.Client,
) -> None:
    role_id, edit, read = new_role_id(), new_permission_id(), new_permission_id()
    carried = [permission_data(edit, "org:posts:edit"), permission_data(read, "org:posts:read")]
    deliver(db, role_event("role.updated", role_id, "org:editor", carried, updated_at=BASE_MS))

    deleted = deliver(db, deleted_object_event("permission.deleted", "permission", edit))
    after_deletion = granted(db, role_id)
    late = deliver(db, role_event("role.updated", role_id, "org:editor", carried, updated_at=BASE_MS + 1))

    assert (deleted, late) == (Outcome.APPLIED, Outcome.APPLIED)
    assert after_deletion == ["org:posts:read"]
    assert granted(db, role_id) == ["org:posts:read"]
    assert deliver(db, permission_event("permission.updated", edit, "org:posts:edit", updated_at=BASE_MS + 9)) is (
        Outcome.STALE
    )


def test_a_permission_event_delivered_twice_refreshes_the_roles_again(db: firestore.Client) -> None:
    """The refresh is named in the event record: a retry after a failed follow-up finds it there."""
    role_id, edit, message_id = new_role_id(), new_permission_id(), new_message_id()
    deliver(db, role_event("role.created", role_id, "org:editor", [permission_data(edit, "org:posts:edit")]))
    body = permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 5)
    deliver(db, body, message_id)
    # As if the first delivery's follow-up had not run: the retry must run it.
    db.collection(PATHS.roles).document(role_id).update({"permissions": ["org:posts:edit"]}, timeout=TIMEOUT_SECONDS)

    again = deliver(db, body, message_id)

    assert again is Outcome.DUPLICATE
    assert granted(db, role_id) == ["org:articles:edit"]


def test_any_order_of_a_roles_history_ends_in_clerks_state(db: firestore.Client) -> None:
    """Role changes, a permission renamed, another deleted: every shuffle (some events twice) ends alike."""
    rng = random.Random(23)
    for _ in range(6):
        role_id, edit, read, manage = new_role_id(), new_permission_id(), new_permission_id(), new_permission_id()
        history = [
            (new_message_id(), permission_event("permission.created", edit, "org:posts:edit")),
            (
                new_message_id(),
                role_event("role.created", role_id, "org:editor", [permission_data(edit, "org:posts:edit")]),
            ),
            (
                new_message_id(),
                role_event(
                    "role.updated",
                    role_id,
                    "org:editor",
                    [permission_data(edit, "org:posts:edit"), permission_data(read, "org:posts:read")],
                    updated_at=BASE_MS + 1,
                ),
            ),
            (
                new_message_id(),
                permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 2),
            ),
            (
                new_message_id(),
                role_event(
                    "role.updated",
                    role_id,
                    "org:editor",
                    [
                        permission_data(edit, "org:articles:edit", updated_at=BASE_MS + 2),
                        permission_data(read, "org:posts:read"),
                        permission_data(manage, "org:posts:manage"),
                    ],
                    updated_at=BASE_MS + 3,
                ),
            ),
            (new_message_id(), deleted_object_event("permission.deleted", "permission", read)),
        ]
        deliveries = history + rng.sample(history, 2)
        rng.shuffle(deliveries)
        for message_id, body in deliveries:
            deliver(db, body, message_id)

        assert granted(db, role_id) == ["org:articles:edit", "org:posts:manage"], [
            json.loads(body)["type"] for _, body in deliveries
        ]


def test_a_member_names_its_roles_id_once_the_role_is_stored(db: firestore.Client) -> None:
    organization, early, late = new_organization_id(), new_user_id(), new_user_id()
    role_id = new_role_id()
    members = PATHS.memberships(organization)
    deliver(
        db,
        membership_event("organizationMembership.created", new_membership_id(), organization, early, role="org:editor"),
    )
    deliver(db, role_event("role.created", role_id, "org:editor"))
    late_membership = new_membership_id()
    deliver(
        db, membership_event("organizationMembership.created", late_membership, organization, late, role="org:editor")
    )
    named = (db.collection(members).document(late).get(timeout=TIMEOUT_SECONDS).to_dict() or {}).get("role_id")
    deliver(
        db,
        membership_event(
            "organizationMembership.updated",
            late_membership,
            organization,
            late,
            role="org:unknown",
            updated_at=BASE_MS + 1,
        ),
    )

    before = db.collection(members).document(early).get(timeout=TIMEOUT_SECONDS).to_dict() or {}
    moved = db.collection(members).document(late).get(timeout=TIMEOUT_SECONDS).to_dict() or {}
    assert "role_id" not in before  # stored before its role: the rules look its key up
    assert named == role_id
    assert "role_id" not in moved  # a role the sync does not know: its id goes with the old role


def test_role_and_permission_bodies_that_cannot_be_stored_are_malformed() -> None:
    bad = [
        role_event("role.created", new_role_id(), "org/slash"),
        role_event("role.created", new_role_id(), "__x__"),
        role_event("role.created", new_role_id(), ""),
        role_event("role.created", "not a role id", "org:editor"),
        json.dumps(
            {
                "type": "role.updated",
                "data": {**json.loads(role_event("role.updated", "role_1", "org:a"))["data"], "permissions": "x"},
            }
        ),
        role_event("role.updated", new_role_id(), "org:a", [{"id": new_permission_id(), "updated_at": BASE_MS}]),
        permission_event("permission.created", new_permission_id(), ""),
        json.dumps({"type": "permission.deleted", "data": {"object": "permission", "deleted": True}}),
    ]

    refused = []
    for body in bad:
        try:
            events.parse_event(body.encode())
        except MalformedEvent as problem:
            refused.append(str(problem))

    assert len(refused) == len(bad), refused


def test_role_keys_that_name_documents_are_accepted() -> None:
    assert all(roles.is_role_key(key) for key in ("org:admin", "admin", "basic_member", "editor", "org:a_b:c"))
    assert not any(roles.is_role_key(key) for key in ("", ".", "..", "__id__", "a/b", "a b", "x" * 129, None, 3))
    assert permissions.ROLES_FOLLOW_UP in events.FOLLOW_UPS


WRONG_VALUES: dict[str, list[Any]] = {
    "id": [None, "", 7, "role/../x", "__x__"],
    "key": [None, "", 7, "a/b", ".."],
    "name": [7, ["x"]],
    "description": [7, {"x": 1}],
    "is_creator_eligible": ["yes", 1],
    "permissions": ["org:posts:edit", [7], [{"id": "perm_1"}], {"id": "perm_1"}],
    "created_at": ["2026-01-01", 1.5, True],
    "updated_at": [None, "soon", 1.5, 2**70],
}


def test_every_wrong_role_or_permission_field_alone_is_a_400_and_changes_nothing(
    client: FlaskClient, db: firestore.Client
) -> None:
    role_id, edit = new_role_id(), new_permission_id()
    good_role = json.loads(role_event("role.updated", role_id, "org:editor", [permission_data(edit, "org:posts:edit")]))
    good_permission = json.loads(permission_event("permission.updated", edit, "org:posts:edit"))
    deliver(db, json.dumps(good_role))
    deliver(db, json.dumps(good_permission))
    before = snapshot_all(db)
    bodies = []
    for field, values in WRONG_VALUES.items():
        for value in values:
            role_body = json.loads(json.dumps(good_role))
            role_body["data"][field] = value
            bodies.append((f"role {field}={value!r}", json.dumps(role_body)))
            # A permission's key is only a value (a role's names a document).
            if field not in {"is_creator_eligible", "permissions"} and value not in ("a/b", ".."):
                permission_body = json.loads(json.dumps(good_permission))
                permission_body["data"][field] = value
                bodies.append((f"permission {field}={value!r}", json.dumps(permission_body)))
    nested = json.loads(json.dumps(good_role))
    nested["data"]["permissions"][0]["updated_at"] = "late"
    bodies.append(("role permissions[0].updated_at", json.dumps(nested)))

    answers = [
        (case, response.status_code, (response.get_json() or {}).get("outcome"))
        for case, body in bodies
        for response in [client.post("/", data=body, headers=signed_headers(body))]
    ]

    assert [answer for answer in answers if answer[1:] != (400, "malformed")] == []
    assert snapshot_all(db) == before


def test_a_refresh_cut_off_after_the_commit_is_503_and_the_retry_completes_it(
    db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, edit, message_id = new_role_id(), new_role_id(), new_permission_id(), new_message_id()
    for role_id in (first, second):
        deliver(db, role_event("role.created", role_id, f"org:r{role_id}", [permission_data(edit, "org:posts:edit")]))
    body = permission_event("permission.updated", edit, "org:articles:edit", updated_at=BASE_MS + 5)
    derive = roles._derive_again
    calls: list[str] = []

    def cut_off_after_one(attempt: Any, paths: Any, role: str) -> bool:
        calls.append(role)
        if len(calls) == 2:
            raise StoreUnavailable("deadline spent")  # as if the 8 s ran out between two roles
        return derive(attempt, paths=paths, role=role)

    monkeypatch.setattr(roles, "_derive_again", cut_off_after_one)
    with pytest.raises(FollowUpFailed):
        deliver(db, body, message_id)
    halfway = sorted([granted(db, first) or [], granted(db, second) or []])
    monkeypatch.setattr(roles, "_derive_again", derive)

    again = deliver(db, body, message_id)

    assert halfway == [["org:articles:edit"], ["org:posts:edit"]]
    assert again is Outcome.DUPLICATE
    assert (granted(db, first), granted(db, second)) == (["org:articles:edit"], ["org:articles:edit"])

"""Organization and membership events against the emulator: data model, order, tombstones, cascades."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from clerk_events import (
    BASE_MS,
    deletion_event,
    envelope,
    membership_data,
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_data,
    organization_deletion_event,
    organization_event,
    user_event,
)
from conftest import PATHS, ROOT, apply_event, snapshot_all
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore

from clerk_sync import events
from clerk_sync.outcome import Outcome
from clerk_sync.payload import MalformedEvent

CREATED = "organizationMembership.created"
UPDATED = "organizationMembership.updated"
DELETED = "organizationMembership.deleted"


def apply(db: firestore.Client, body: str, message_id: str | None = None) -> Outcome:
    return apply_event(db, message_id or new_message_id(), events.parse_event(body.encode()))


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def organization(db: firestore.Client, organization_id: str) -> dict[str, Any] | None:
    return db.collection(PATHS.organizations).document(organization_id).get(timeout=10).to_dict()


def member(db: firestore.Client, organization_id: str, user_id: str) -> dict[str, Any] | None:
    return db.collection(PATHS.memberships(organization_id)).document(user_id).get(timeout=10).to_dict()


def members(db: firestore.Client, organization_id: str) -> list[str]:
    return sorted(snapshot.id for snapshot in db.collection(PATHS.memberships(organization_id)).stream(timeout=10))


# --- data model ------------------------------------------------------------------------------------


def test_clerk_organization_payload_becomes_the_documented_document(db: firestore.Client) -> None:
    body = (ROOT / "tests" / "payloads" / "organization_created.json").read_text()

    outcome = apply(db, body)

    stored = organization(db, "org_2orgACMExyzABCdefGHIjkLMnop")
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert isinstance(stored.pop("synced_at"), DatetimeWithNanoseconds)
    assert len(stored.pop("sync_digest")) == 64
    assert stored == {
        "clerk_id": "org_2orgACMExyzABCdefGHIjkLMnop",
        "name": "Acme Example",
        "slug": "acme-example",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsImlpZCI6Im9yZyJ9",
        "public_metadata": {},
        "max_allowed_memberships": 5,
        "created_by": "user_2abcDEFghiJKLmnoPQRstuVWxyz",
        "created_at": ms(1756400000000),
        "updated_at": ms(1756400000000),
    }


def test_clerk_membership_payload_becomes_the_documented_document(db: firestore.Client) -> None:
    body = (ROOT / "tests" / "payloads" / "organizationMembership_updated.json").read_text()

    outcome = apply(db, body)

    stored = member(db, "org_2orgACMExyzABCdefGHIjkLMnop", "user_2abcDEFghiJKLmnoPQRstuVWxyz")
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert isinstance(stored.pop("synced_at"), DatetimeWithNanoseconds)
    assert len(stored.pop("sync_digest")) == 64
    assert stored == {
        "membership_id": "orgmem_2memALICExyzABCdefGHIjkL",
        "organization_id": "org_2orgACMExyzABCdefGHIjkLMnop",
        "user_id": "user_2abcDEFghiJKLmnoPQRstuVWxyz",
        "role": "org:member",
        "role_name": "Member",
        "permissions": ["org:sys_memberships:read"],
        "public_metadata": {"team": "design"},
        "identifier": "alice@example.com",
        "first_name": "Alice",
        "last_name": "Anders",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsInJpZCI6I2abcDEFghiJK",
        "created_at": ms(1756400000040),
        "updated_at": ms(1756600000000),
    }
    # The organization inside the membership payload is not an organization event: nothing else is written.
    assert organization(db, "org_2orgACMExyzABCdefGHIjkLMnop") is None


def test_private_metadata_of_organizations_and_memberships_is_stored_nowhere(db: firestore.Client) -> None:
    organization_id, user_id = new_organization_id(), new_user_id()

    apply(db, organization_event("organization.created", organization_id, private_metadata={"k": "PRIVATE_ORG"}))
    apply(
        db,
        membership_event(CREATED, new_membership_id(), organization_id, user_id, private_metadata={"k": "PRIVATE_M"}),
    )

    everything = json.dumps(snapshot_all(db), default=str)
    assert "PRIVATE" not in everything
    assert "private_metadata" not in everything


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: envelope("organization.created", {"name": "no id", "updated_at": BASE_MS}), "missing data.id"),
        (lambda: envelope("organization.updated", organization_data("org/x")), "not a Clerk organization id"),
        (
            lambda: envelope("organization.updated", organization_data("org_x", updated_at=None)),
            "missing data.updated_at",
        ),
        (lambda: envelope("organization.updated", organization_data("org_x", name=7)), "data.name is not a string"),
        (
            lambda: envelope("organization.updated", organization_data("org_x", max_allowed_memberships="5")),
            "not an integer",
        ),
        (
            lambda: envelope(CREATED, {**membership_data("orgmem_1", "org_1", "user_1"), "organization": None}),
            "organization",
        ),
        (
            lambda: envelope(CREATED, {**membership_data("orgmem_1", "org_1", "user_1"), "public_user_data": {}}),
            "missing data.public_user_data.user_id",
        ),
        (lambda: envelope(CREATED, membership_data("orgmem_1", "org_1", "user/1")), "not a Clerk user id"),
        (lambda: envelope(CREATED, membership_data("orgmem_1", "org_1", "user_1", permissions="all")), "permissions"),
        (lambda: envelope(UPDATED, membership_data("orgmem_1", "org_1", "user_1", updated_at="now")), "milliseconds"),
        (lambda: envelope("organization.deleted", {"deleted": True}), "missing data.id"),
    ],
)
def test_malformed_organization_and_membership_events_are_refused_with_a_safe_reason(build: Any, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        events.parse_event(json.dumps(build()).encode())


# --- organizations: order and deletion --------------------------------------------------------------


def test_an_older_organization_update_is_stale(db: firestore.Client) -> None:
    organization_id = new_organization_id()
    apply(db, organization_event("organization.updated", organization_id, name="New", updated_at=BASE_MS + 10))

    outcome = apply(db, organization_event("organization.created", organization_id, name="Old", updated_at=BASE_MS))

    stored = organization(db, organization_id)
    assert outcome is Outcome.STALE
    assert stored is not None
    assert stored["name"] == "New"


def test_the_apps_own_organization_fields_survive_an_update(db: firestore.Client) -> None:
    organization_id = new_organization_id()
    apply(db, organization_event("organization.created", organization_id))
    db.collection(PATHS.organizations).document(organization_id).update({"billing_plan": "team"}, timeout=10)

    apply(db, organization_event("organization.updated", organization_id, name="Renamed", updated_at=BASE_MS + 1))

    stored = organization(db, organization_id)
    assert stored is not None
    assert (stored["name"], stored["billing_plan"]) == ("Renamed", "team")


def test_organization_deleted_removes_it_and_every_membership_and_keeps_a_tombstone(db: firestore.Client) -> None:
    organization_id, other_organization = new_organization_id(), new_organization_id()
    apply(db, organization_event("organization.created", organization_id))
    users = [new_user_id() for _ in range(3)]
    for user_id in users:
        apply(db, membership_event(CREATED, new_membership_id(), organization_id, user_id))
    apply(db, membership_event(CREATED, new_membership_id(), other_organization, users[0]))

    outcome = apply(db, organization_deletion_event(organization_id, timestamp=BASE_MS + 5))

    tombstone = db.collection(PATHS.organization_tombstones).document(organization_id).get(timeout=10).to_dict()
    assert outcome is Outcome.APPLIED
    assert organization(db, organization_id) is None
    assert members(db, organization_id) == []
    assert members(db, other_organization) == [users[0]]
    assert tombstone is not None
    assert (tombstone["clerk_id"], tombstone["deleted_at"]) == (organization_id, ms(BASE_MS + 5))


def test_nothing_comes_back_for_a_deleted_organization(db: firestore.Client) -> None:
    organization_id, user_id = new_organization_id(), new_user_id()
    apply(db, organization_deletion_event(organization_id))

    late = [
        apply(db, organization_event("organization.updated", organization_id, updated_at=BASE_MS + 10**9)),
        apply(db, membership_event(CREATED, new_membership_id(), organization_id, user_id, updated_at=BASE_MS + 10**9)),
    ]

    assert late == [Outcome.STALE, Outcome.STALE]
    assert organization(db, organization_id) is None
    assert members(db, organization_id) == []


# --- memberships: order, re-joins, tombstones -------------------------------------------------------------


def test_a_membership_is_stored_before_its_organization_or_user_arrive(db: firestore.Client) -> None:
    organization_id, user_id = new_organization_id(), new_user_id()

    outcome = apply(db, membership_event(CREATED, new_membership_id(), organization_id, user_id))

    assert outcome is Outcome.APPLIED
    assert members(db, organization_id) == [user_id]
    assert organization(db, organization_id) is None
    assert db.collection(PATHS.users).document(user_id).get(timeout=10).exists is False


def test_membership_updates_are_ordered_by_their_updated_at(db: firestore.Client) -> None:
    organization_id, user_id, membership_id = new_organization_id(), new_user_id(), new_membership_id()
    newer = membership_event(UPDATED, membership_id, organization_id, user_id, role="org:admin", updated_at=BASE_MS + 9)
    older = membership_event(CREATED, membership_id, organization_id, user_id, role="org:member", updated_at=BASE_MS)

    outcomes = [apply(db, newer), apply(db, older)]

    stored = member(db, organization_id, user_id)
    assert outcomes == [Outcome.APPLIED, Outcome.STALE]
    assert stored is not None
    assert stored["role"] == "org:admin"


def test_a_delete_with_an_older_updated_at_than_the_last_update_still_deletes(db: firestore.Client) -> None:
    # Clerk's own example payloads: the deleted event carries an older updated_at than the update.
    organization_id, user_id, membership_id = new_organization_id(), new_user_id(), new_membership_id()
    apply(db, membership_event(UPDATED, membership_id, organization_id, user_id, updated_at=BASE_MS + 50))

    outcome = apply(db, membership_event(DELETED, membership_id, organization_id, user_id, updated_at=BASE_MS))

    assert outcome is Outcome.APPLIED
    assert members(db, organization_id) == []
    assert db.collection(PATHS.membership_tombstones).document(membership_id).get(timeout=10).exists


def test_a_late_delete_of_an_old_membership_keeps_the_member_who_rejoined(db: firestore.Client) -> None:
    organization_id, user_id = new_organization_id(), new_user_id()
    first, second = new_membership_id(), new_membership_id()
    apply(db, membership_event(CREATED, first, organization_id, user_id, updated_at=BASE_MS))
    apply(db, membership_event(CREATED, second, organization_id, user_id, updated_at=BASE_MS + 100))

    outcome = apply(db, membership_event(DELETED, first, organization_id, user_id, updated_at=BASE_MS))
    late_update = apply(db, membership_event(UPDATED, first, organization_id, user_id, updated_at=BASE_MS + 10**9))

    stored = member(db, organization_id, user_id)
    assert (outcome, late_update) == (Outcome.APPLIED, Outcome.STALE)
    assert stored is not None
    assert stored["membership_id"] == second


def test_a_delete_before_its_create_keeps_the_membership_deleted(db: firestore.Client) -> None:
    organization_id, user_id, membership_id = new_organization_id(), new_user_id(), new_membership_id()

    outcomes = [
        apply(db, membership_event(DELETED, membership_id, organization_id, user_id)),
        apply(db, membership_event(CREATED, membership_id, organization_id, user_id)),
    ]

    assert outcomes == [Outcome.APPLIED, Outcome.STALE]
    assert members(db, organization_id) == []


def test_a_duplicate_membership_delivery_changes_nothing(db: firestore.Client) -> None:
    message_id = new_message_id()
    body = membership_event(CREATED, new_membership_id(), new_organization_id(), new_user_id())
    apply(db, body, message_id)
    before = snapshot_all(db)

    outcome = apply(db, body, message_id)

    assert outcome is Outcome.DUPLICATE
    assert snapshot_all(db) == before


def test_user_deleted_removes_their_memberships_everywhere_and_nothing_comes_back(db: firestore.Client) -> None:
    user_id, bystander = new_user_id(), new_user_id()
    organizations = [new_organization_id() for _ in range(3)]
    apply(db, user_event("user.created", user_id))
    for organization_id in organizations:
        apply(db, membership_event(CREATED, new_membership_id(), organization_id, user_id))
        apply(db, membership_event(CREATED, new_membership_id(), organization_id, bystander))
    # Someone else's `memberships` collection elsewhere in the database is not ours to touch.
    db.collection("teams/t1/memberships").document(user_id).set({"user_id": user_id}, timeout=10)

    outcome = apply(db, deletion_event(user_id))
    late = apply(
        db, membership_event(UPDATED, new_membership_id(), organizations[0], user_id, updated_at=BASE_MS + 10**9)
    )

    assert (outcome, late) == (Outcome.APPLIED, Outcome.STALE)
    assert [members(db, organization_id) for organization_id in organizations] == [[bystander]] * 3
    assert db.collection("teams/t1/memberships").document(user_id).get(timeout=10).exists


def test_a_redelivered_deletion_finishes_a_sweep_and_is_applied_not_duplicate(db: firestore.Client) -> None:
    organization_id, message_id = new_organization_id(), new_message_id()
    apply(db, organization_deletion_event(organization_id), message_id)
    # As if the first attempt's sweep had been cut off: members still there under a tombstone.
    for _ in range(3):
        db.collection(PATHS.memberships(organization_id)).document(new_user_id()).set({"user_id": "x"}, timeout=10)

    outcome = apply(db, organization_deletion_event(organization_id), message_id)
    again = apply(db, organization_deletion_event(organization_id), message_id)

    assert (outcome, again) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert members(db, organization_id) == []

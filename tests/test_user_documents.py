"""User documents the app shares with the sync: its own fields and subcollections survive every outcome,
both deletion modes, damaged email claims, lenient deletion times and a nested USERS_COLLECTION."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from clerk_events import BASE_MS, deletion_event, envelope, new_message_id, new_user_id, user_event
from conftest import PATHS, apply_event, snapshot_all
from google.cloud import firestore

from clerk_sync import config, events, paths, users
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome

APP_FIELDS = {"plan": "pro", "onboarding": {"step": 3, "done": False}, "preferences": ["dark"]}


def apply(db: firestore.Client, body: str, message_id: str | None = None, **settings: Any) -> Outcome:
    """Parse and apply a body with the test settings, some of them replaced."""
    chosen = dataclasses.replace(config.read_settings(), **settings)
    return apply_event(db, message_id or new_message_id(), events.parse_event(body.encode()), settings=chosen)


def user_doc(db: firestore.Client, user_id: str, collection: str = PATHS.users) -> dict[str, Any] | None:
    return db.collection(collection).document(user_id).get(timeout=10).to_dict()


def app_owned(document: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (document or {}).items() if key not in users.OWNED_FIELDS}


@pytest.fixture
def user_with_app_data(db: firestore.Client) -> str:
    """A synced user whose document also holds the app's fields and a subcollection of its own."""
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["own@example.com"], public_metadata={"a": 1, "b": 2}))
    reference = db.collection(PATHS.users).document(user_id)
    reference.update(APP_FIELDS, timeout=10)
    reference.collection("notes").document("n1").set({"text": "the app's own"}, timeout=10)
    return user_id


def test_an_update_replaces_only_the_synced_fields(db: firestore.Client, user_with_app_data: str) -> None:
    user_id = user_with_app_data

    outcome = apply(
        db,
        user_event(
            "user.updated", user_id, emails=["own@example.com"], public_metadata={"a": 9}, updated_at=BASE_MS + 1
        ),
    )

    stored = user_doc(db, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert app_owned(stored) == APP_FIELDS
    assert stored["public_metadata"] == {"a": 9}  # replaced whole: "b" is gone, as it is in Clerk
    assert db.collection(PATHS.users).document(user_id).collection("notes").document("n1").get(timeout=10).exists


@pytest.mark.parametrize("case", ["duplicate", "stale", "conflict"])
def test_outcomes_that_write_nothing_leave_the_document_exactly_as_it_was(
    db: firestore.Client, user_with_app_data: str, case: str
) -> None:
    user_id = user_with_app_data
    seen_id = new_message_id()
    newer = user_event("user.updated", user_id, emails=["own@example.com"], updated_at=BASE_MS + 5)
    apply(db, newer, seen_id)
    before = snapshot_all(db)
    if case == "duplicate":
        outcome = apply(db, newer, seen_id)
    elif case == "stale":
        outcome = apply(db, user_event("user.updated", user_id, first_name="Old", updated_at=BASE_MS + 1))
    else:
        outcome = apply(db, user_event("user.created", new_user_id(), emails=["own@example.com"]))

    after = snapshot_all(db)
    added = set(after) - set(before)
    assert outcome is Outcome(case)
    assert len(added) == (1 if case == "stale" else 0)  # a stale event is recorded, nothing else
    assert all(path.startswith(f"{PATHS.events}/") for path in added)
    assert {path: value for path, value in after.items() if path in before} == before


def test_an_app_document_created_before_the_first_event_is_kept_and_filled_in(db: firestore.Client) -> None:
    user_id = new_user_id()
    db.collection(PATHS.users).document(user_id).set({"plan": "trial"}, timeout=10)

    outcome = apply(db, user_event("user.created", user_id))

    stored = user_doc(db, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (stored["plan"], stored["clerk_id"]) == ("trial", user_id)


def test_default_deletion_removes_the_document_but_not_its_subcollections(
    db: firestore.Client, user_with_app_data: str
) -> None:
    user_id = user_with_app_data

    outcome = apply(db, deletion_event(user_id))

    reference = db.collection(PATHS.users).document(user_id)
    assert outcome is Outcome.APPLIED
    assert not reference.get(timeout=10).exists
    assert reference.collection("notes").document("n1").get(timeout=10).exists  # Firestore never cascades
    assert db.collection(PATHS.claims).document("own@example.com").get(timeout=10).exists is False


def test_keep_app_fields_removes_only_what_the_function_wrote(db: firestore.Client, user_with_app_data: str) -> None:
    user_id = user_with_app_data

    outcome = apply(db, deletion_event(user_id, timestamp=BASE_MS + 77), on_user_deleted="keep-app-fields")
    late = apply(db, user_event("user.updated", user_id, updated_at=BASE_MS + 10**9), on_user_deleted="keep-app-fields")

    stored = user_doc(db, user_id)
    assert (outcome, late) == (Outcome.APPLIED, Outcome.STALE)
    assert stored == {**APP_FIELDS, "clerk_deleted_at": datetime.fromtimestamp((BASE_MS + 77) / 1000, UTC)}
    assert not db.collection(PATHS.claims).document("own@example.com").get(timeout=10).exists
    assert db.collection(PATHS.user_tombstones).document(user_id).get(timeout=10).exists


def test_keep_app_fields_creates_nothing_for_a_user_never_seen(db: firestore.Client) -> None:
    user_id = new_user_id()

    apply(db, deletion_event(user_id), on_user_deleted="keep-app-fields")

    assert user_doc(db, user_id) is None


@pytest.mark.parametrize(
    "claim", [{"email": "held@example.com"}, {"clerk_id": "users/../x"}, {"clerk_id": 42}, {"clerk_id": ""}]
)
def test_an_unreadable_claim_is_taken_over_with_a_warning(db: firestore.Client, claim: dict[str, Any]) -> None:
    db.collection(PATHS.claims).document("held@example.com").set(claim, timeout=10)
    user_id = new_user_id()
    event = events.parse_event(user_event("user.created", user_id, emails=["held@example.com"]).encode())
    delivery = Delivery(message_id=new_message_id(), settings=config.read_settings())
    assert not isinstance(event, events.IgnoredEvent)

    outcome = events.apply_event(db, event, delivery)

    stored_claim = db.collection(PATHS.claims).document("held@example.com").get(timeout=10).to_dict()
    assert outcome is Outcome.APPLIED
    assert stored_claim is not None
    assert stored_claim["clerk_id"] == user_id
    assert delivery.warnings == ["email claim without a readable owner taken over"]
    assert "held@example.com" not in json.dumps(delivery.notes)


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        (1716883200, 1716883200_000),  # seconds, as Clerk's own OpenAPI examples send it
        (1716883200.5, 1716883200_500),
        ("1716883200", 1716883200_000),
        (1716883200_123, 1716883200_123),
        (1716883200_123_456, 1716883200_123),  # microseconds
        (1716883200_123_456_789, 1716883200_123),  # nanoseconds
        ("yesterday", None),
        (None, None),
        (True, None),
        (-5, None),
        (float("inf"), None),
        (10**30, None),
    ],
)
def test_a_deletion_never_fails_because_of_its_informational_timestamp(
    db: firestore.Client, timestamp: object, expected_ms: int | None
) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id))
    body = json.dumps({**envelope("user.deleted", {"id": user_id, "deleted": True}), "timestamp": timestamp})

    outcome = apply(db, body)

    tombstone = db.collection(PATHS.user_tombstones).document(user_id).get(timeout=10).to_dict()
    assert outcome is Outcome.APPLIED
    assert user_doc(db, user_id) is None
    assert tombstone is not None
    expected = None if expected_ms is None else datetime.fromtimestamp(expected_ms / 1000, UTC)
    assert tombstone["deleted_at"] == expected


def test_a_nested_users_collection_keeps_users_and_bookkeeping_beside_each_other(db: firestore.Client) -> None:
    nested = paths.paths_for("tenants/acme/users", "tenants/acme/organizations")
    settings = dataclasses.replace(config.read_settings(), paths=nested)
    user_id = new_user_id()

    outcome = apply(db, user_event("user.created", user_id, emails=["t@example.com"]), paths=nested)
    apply(db, deletion_event(new_user_id()), paths=settings.paths)

    assert outcome is Outcome.APPLIED
    assert user_doc(db, user_id, "tenants/acme/users") is not None
    assert user_doc(db, user_id) is None
    assert db.collection("tenants/acme/email_claims").document("t@example.com").get(timeout=10).exists
    assert not db.collection(PATHS.claims).document("t@example.com").get(timeout=10).exists
    assert len(list(db.collection("tenants/acme/user_tombstones").stream(timeout=10))) == 1
    assert list(db.collection(PATHS.events).stream(timeout=10)) == []

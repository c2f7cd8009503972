"""A kind of Clerk object is a parser and a declaration: a test-only kind gets every guarantee.

`notes` below is not a Clerk kind; it is the smallest declaration there can be, and the shared bodies
in `clerk_sync.kind` give it ordering, duplicates, tombstones, sweeps and the app's own fields
without a line of transaction code of its own.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import pytest
from clerk_events import BASE_MS, new_message_id
from conftest import apply_event
from google.cloud import firestore

from clerk_sync import events, kind, paths, payload
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.kind import Deletion, Upsert
from clerk_sync.outcome import FollowUpFailed, Outcome

NOTES = "test_notes"
NOTE_TOMBSTONES = "test_note_tombstones"
COMMENTS = "comments"  # a subcollection a note's deletion sweeps


def _comments(db: firestore.Client, _paths: Any, ids: kind.Ids) -> list[Sweep]:
    return [Sweep(query=db.collection(f"{NOTES}/{ids['clerk_id']}/{COMMENTS}"), ours=lambda _path: True)]


# The whole declaration of a new kind.
KIND = kind.Kind(
    family="note",
    sweeps=_comments,
    collection=lambda _paths, _ids: NOTES,
    tombstones=lambda _paths: NOTE_TOMBSTONES,
    synced_fields=("clerk_id", "text", "updated_at"),
)


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The whole parser of a new kind."""
    data = envelope["data"]
    note_id = payload.clerk_id(data.get("id"), "data.id", "note")
    updated_at = payload.required_time(data, "updated_at")
    document = {"clerk_id": note_id, "text": payload.optional_str(data, "text"), "updated_at": updated_at}
    return kind.parsed_upsert(KIND, event_type, {"clerk_id": note_id}, document, updated_at)


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> Deletion:
    """A deletion carries only the id."""
    note_id = payload.clerk_id(envelope["data"].get("id"), "data.id", "note")
    return Deletion(KIND, event_type, {"clerk_id": note_id}, payload.lenient_time(envelope.get("timestamp")))


def note(db: firestore.Client, event_type: str, note_id: str, message_id: str | None = None, **data: Any) -> Outcome:
    envelope = {"type": event_type, "timestamp": BASE_MS, "data": {"id": note_id, **data}}
    body = json.dumps(envelope).encode()
    parse = parse_deletion if event_type == "note.deleted" else parse_upsert
    return apply_event(db, message_id or new_message_id(), parse(event_type, envelope, body))


def stored(db: firestore.Client, path: str) -> dict[str, Any] | None:
    return db.document(path).get(timeout=10).to_dict()


def test_a_test_only_kind_is_ordered_deduplicated_and_kept_deleted_by_the_shared_bodies(db: firestore.Client) -> None:
    message_id = new_message_id()
    db.document(f"{NOTES}/note_1").set({"app_field": "kept"}, timeout=10)

    created = note(db, "note.created", "note_1", message_id, text="first", updated_at=BASE_MS + 1)
    again = note(db, "note.created", "note_1", message_id, text="first", updated_at=BASE_MS + 1)
    newer = note(db, "note.updated", "note_1", text="second", updated_at=BASE_MS + 3)
    older = note(db, "note.updated", "note_1", text="late", updated_at=BASE_MS + 2)
    kept = stored(db, f"{NOTES}/note_1")

    assert (created, again, newer, older) == (Outcome.APPLIED, Outcome.DUPLICATE, Outcome.APPLIED, Outcome.STALE)
    assert kept is not None
    assert (kept["text"], kept["app_field"]) == ("second", "kept")


def test_a_test_only_kind_is_deleted_for_good_and_its_sweep_runs(db: firestore.Client) -> None:
    note(db, "note.created", "note_2", text="doomed", updated_at=BASE_MS + 1)
    for index in range(3):
        db.document(f"{NOTES}/note_2/{COMMENTS}/c{index}").set({"by": "app"}, timeout=10)

    deleted = note(db, "note.deleted", "note_2")
    resurrection = note(db, "note.updated", "note_2", text="back", updated_at=BASE_MS + 99)

    assert (deleted, resurrection) == (Outcome.APPLIED, Outcome.STALE)
    assert stored(db, f"{NOTES}/note_2") is None
    tombstone = stored(db, f"{NOTE_TOMBSTONES}/note_2")
    assert tombstone is not None
    assert tombstone["clerk_id"] == "note_2"
    assert list(db.collection(f"{NOTES}/note_2/{COMMENTS}").stream(timeout=10)) == []


def test_a_follow_up_that_fails_after_the_commit_is_completed_by_the_retry(
    db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def flaky(_db: firestore.Client, change: events.Change, delivery: Delivery, _deadline: float) -> None:
        calls.append((change.clerk_id, delivery.message_id))
        if len(calls) == 1:
            raise FollowUpFailed("test follow-up: first try fails")

    monkeypatch.setitem(events.FOLLOW_UPS, "test_flaky", flaky)
    followed = dataclasses.replace(KIND, follow_ups=lambda change, stored: ("test_flaky",))
    monkeypatch.setattr(sys.modules[__name__], "KIND", followed)
    message_id = new_message_id()

    with pytest.raises(FollowUpFailed):
        note(db, "note.created", "note_3", message_id, text="kept", updated_at=BASE_MS + 5)
    committed = stored(db, f"{NOTES}/note_3")
    retried = note(db, "note.created", "note_3", message_id, text="kept", updated_at=BASE_MS + 5)
    older = note(db, "note.updated", "note_3", text="old", updated_at=BASE_MS + 1)

    assert committed is not None  # the commit stood; only the follow-up failed
    assert retried is Outcome.DUPLICATE
    assert older is Outcome.STALE
    assert calls == [("note_3", message_id), ("note_3", message_id)]  # the retry ran it; the stale event did not


# A kind whose document holds parts versioned on their own declares `ordering` (billing's
# subscription merges each item by its own updated_at this way) and, for a document whose id is not
# one of the ids, `document_id`.
BOARDS = "test_boards"


def _by_part(change: Upsert, stored: dict[str, Any] | None) -> Upsert | None:
    """Each pin by its own version; None when no pin of the change is newer."""
    pins = dict((stored or {}).get("pins") or {})
    newer = {name: pin for name, pin in change.document["pins"].items() if pin["at"] > pins.get(name, {}).get("at", -1)}
    if not newer:
        return None
    return dataclasses.replace(change, document={**change.document, "pins": {**pins, **newer}})


BOARD = kind.Kind(
    family="board",
    collection=lambda _paths, ids: f"{BOARDS}/{ids['clerk_id']}/parts",
    document_id=lambda _ids: "pins",
    tombstones=lambda _paths: NOTE_TOMBSTONES,
    synced_fields=("clerk_id", "pins"),
    ordering=_by_part,
)


def pin(db: firestore.Client, board_id: str, name: str, text: str, at: int) -> Outcome:
    document = {"clerk_id": board_id, "pins": {name: {"text": text, "at": at}}}
    change = kind.parsed_upsert(BOARD, "board.updated", {"clerk_id": board_id}, document, payload.EPOCH)
    return apply_event(db, new_message_id(), change)


def test_a_kind_with_its_own_ordering_merges_parts_each_by_its_own_version(db: firestore.Client) -> None:
    outcomes = [
        pin(db, "board_1", "a", "a2", 2),
        pin(db, "board_1", "b", "b1", 1),
        pin(db, "board_1", "a", "a1", 1),  # older than the stored a: stale, b untouched
        pin(db, "board_1", "b", "b3", 3),
    ]
    board = stored(db, f"{BOARDS}/board_1/parts/pins")

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.STALE, Outcome.APPLIED]
    assert board is not None
    assert board["pins"] == {"a": {"text": "a2", "at": 2}, "b": {"text": "b3", "at": 3}}


def test_every_kind_finds_its_collections_beside_a_nested_users_collection() -> None:
    nested = paths.paths_for("tenants/acme/users", "tenants/acme/organizations")
    ids = {
        "clerk_id": "x_1",
        "organization_id": "org_1",
        "user_id": "user_1",
        "invitation_id": "orginv_1",
        "payer_type": "user",
        "payer_id": "user_1",
        "payment_id": "pay_1",
    }
    client = firestore.Client(project="no-calls-made")  # references only: nothing is read or written

    tombstones = {declared.family: declared.tombstone_collection(nested) for declared in events.KINDS}
    documents = {declared.family: declared.document(client, nested, ids).path for declared in events.KINDS}

    assert all(collection.startswith("tenants/acme/") for collection in tombstones.values())
    assert tombstones["user"] == "tenants/acme/user_tombstones"
    assert tombstones["organizationInvitation"] == "tenants/acme/invitation_tombstones"
    # One collection for each kind's tombstones, except Billing's two, which share one.
    assert len(set(tombstones.values())) == len(events.KINDS) - 1
    assert documents["user"] == "tenants/acme/users/x_1"
    assert documents["permission"] == "tenants/acme/organization_permissions/x_1"
    assert documents["organizationMembership"] == "tenants/acme/organizations/org_1/memberships/user_1"
    assert documents["organizationInvitation"] == "tenants/acme/organizations/org_1/invitations/orginv_1"


def test_a_new_top_level_kind_is_told_where_to_name_its_collections() -> None:
    unplaced = kind.Kind(family="note", synced_fields=("clerk_id",))

    with pytest.raises(KeyError, match="declares its collection"):
        unplaced.document(
            firestore.Client(project="no-calls-made"), paths.paths_for("users", "orgs"), {"clerk_id": "n"}
        )
    with pytest.raises(KeyError, match="note"):
        unplaced.tombstone_collection(paths.paths_for("users", "orgs"))

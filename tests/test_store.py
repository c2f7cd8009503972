"""Applying user events against the real emulator: ordering, idempotency, email claims, data model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import emulator
import pytest
from clerk_events import BASE_MS, deletion_event, new_message_id, new_user_id, user_data, user_event
from conftest import PATHS, PROJECT, apply_event, snapshot_all
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore

from clerk_sync import event_log, events, ids, kind, users
from clerk_sync.outcome import Outcome, StoreUnavailable
from clerk_sync.payload import MalformedEvent

TTL = timedelta(days=30)
RESERVED_ID = re.compile(r"__.+__", re.DOTALL)
LONG_INPUT = "x" * 1_501


def apply(db: firestore.Client, body: str, message_id: str | None = None, deadline: float = 8.0) -> Outcome:
    """Parse a body and apply it as the function would."""
    event = events.parse_event(body.encode())
    assert isinstance(event, kind.Upsert | kind.Deletion)
    assert event.kind is users.KIND
    return apply_event(db, message_id or new_message_id(), event, deadline_seconds=deadline)


def document(db: firestore.Client, collection: str, document_id: str) -> dict[str, Any] | None:
    return db.collection(collection).document(document_id).get(timeout=10).to_dict()


def claims(db: firestore.Client) -> dict[str, str]:
    """Claim document id -> owning Clerk user id."""
    return {claim.id: claim.get("clerk_id") for claim in db.collection(PATHS.claims).stream(timeout=10)}


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


# --- data model -----------------------------------------------------------------------------------


def test_created_user_has_every_documented_field_with_firestore_types(db: firestore.Client) -> None:
    user_id = new_user_id()
    body = user_event(
        "user.created",
        user_id,
        emails=["alice@example.com"],
        phones=["+15555550100"],
        username="alice",
        external_id="ext-1",
        public_metadata={"plan": "pro", "seats": 3},
        unsafe_metadata={"theme": "dark"},
        banned=True,
        last_sign_in_at=None,
        updated_at=BASE_MS + 123,
    )

    outcome = apply(db, body)

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    synced_at = stored.pop("synced_at")
    assert re.fullmatch(r"[0-9a-f]{64}", stored.pop("sync_digest"))
    assert stored == {
        "clerk_id": user_id,
        "email": "alice@example.com",
        "email_verified": True,
        "email_addresses": ["alice@example.com"],
        "phone_number": "+15555550100",
        "username": "alice",
        "first_name": "Alice",
        "last_name": "Anders",
        "image_url": "https://img.clerk.com/example",
        "external_id": "ext-1",
        "public_metadata": {"plan": "pro", "seats": 3},
        "unsafe_metadata": {"theme": "dark"},
        "banned": True,
        "locked": False,
        "deprovisioned": False,
        "created_at": ms(BASE_MS - 60_000),
        "updated_at": ms(BASE_MS + 123),
        "last_sign_in_at": None,
    }
    # Timestamps come back as Firestore Timestamps, not strings or numbers.
    assert isinstance(stored["created_at"], DatetimeWithNanoseconds)
    assert isinstance(stored["updated_at"], DatetimeWithNanoseconds)
    assert isinstance(synced_at, DatetimeWithNanoseconds)
    assert synced_at > ms(BASE_MS)


def test_applied_event_is_recorded_with_ids_outcome_and_expiry(db: firestore.Client) -> None:
    user_id = new_user_id()
    message_id = new_message_id()

    apply(db, user_event("user.created", user_id), message_id)

    record = document(db, PATHS.events, event_log.record_id(message_id))
    assert record is not None
    assert {key: record[key] for key in ("svix_id", "type", "clerk_id", "outcome")} == {
        "svix_id": message_id,
        "type": "user.created",
        "clerk_id": user_id,
        "outcome": "applied",
    }
    assert isinstance(record["received_at"], datetime)
    assert record["expires_at"] - record["received_at"] == pytest.approx(TTL, abs=timedelta(minutes=5))
    assert set(record) == {"svix_id", "type", "clerk_id", "outcome", "received_at", "expires_at"}


def test_claim_names_the_owner_of_the_normalised_primary_email(db: firestore.Client) -> None:
    user_id = new_user_id()

    apply(db, user_event("user.created", user_id, emails=["Alice@Example.com"]))

    claim = document(db, PATHS.claims, "alice@example.com")
    assert claim is not None
    assert (claim["email"], claim["clerk_id"]) == ("alice@example.com", user_id)
    assert isinstance(claim["claimed_at"], datetime)


def test_unicode_names_round_trip(db: firestore.Client) -> None:
    user_id = new_user_id()
    names = {"first_name": "Zoë 李 Åsa", "last_name": "Ñúñez-Ødegård 🙂", "username": "ゆき"}

    apply(db, user_event("user.created", user_id, **names))

    stored = document(db, PATHS.users, user_id)
    assert stored is not None
    assert {field: stored[field] for field in names} == names


def test_private_metadata_is_stored_in_no_collection(db: firestore.Client) -> None:
    user_id = new_user_id()
    private = {"stripe_customer": "cus_PRIVATE_4242", "internal_note": "vip-PRIVATE"}

    apply(db, user_event("user.created", user_id, private_metadata=private))
    apply(db, user_event("user.updated", user_id, private_metadata=private, updated_at=BASE_MS + 1))
    apply(db, deletion_event(user_id))
    apply(db, user_event("user.created", new_user_id(), private_metadata=private))

    everything = json.dumps(snapshot_all(db), default=str)
    assert len(snapshot_all(db)) > 5
    assert "PRIVATE" not in everything
    assert "private_metadata" not in everything


def test_primary_email_that_is_not_the_first_address_is_stored_and_claimed(db: firestore.Client) -> None:
    user_id = new_user_id()

    apply(db, user_event("user.created", user_id, emails=["first@example.com", "primary@example.com"], primary=1))

    stored = document(db, PATHS.users, user_id)
    assert stored is not None
    assert stored["email"] == "primary@example.com"
    assert claims(db) == {"primary@example.com": user_id}


def test_phone_only_user_is_stored_without_email_or_claim(db: firestore.Client) -> None:
    user_id = new_user_id()

    outcome = apply(db, user_event("user.created", user_id, emails=[], phones=["+15555550123"]))

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (stored["email"], stored["phone_number"]) == (None, "+15555550123")
    assert claims(db) == {}


def test_username_only_user_is_stored_without_email_or_claim(db: firestore.Client) -> None:
    user_id = new_user_id()

    outcome = apply(db, user_event("user.created", user_id, emails=[], username="nomail"))

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (stored["email"], stored["username"]) == (None, "nomail")
    assert claims(db) == {}


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"next": value}
    return value


@pytest.mark.parametrize(
    "metadata",
    [{"grid": [[1, 2], [3]]}, _nested(25), {"__reserved__": "x"}, {"k" * 1_600: 1}, {"n": 2**70}],
    ids=["array_in_array", "nesting_25", "reserved_name", "long_name", "beyond_int64"],
)
def test_metadata_firestore_cannot_hold_is_stored_as_json_text(db: firestore.Client, metadata: dict[str, Any]) -> None:
    user_id = new_user_id()

    outcome = apply(db, user_event("user.created", user_id, unsafe_metadata=metadata))

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert json.loads(stored["unsafe_metadata"]) == metadata


def test_metadata_at_the_limits_firestore_accepts_is_stored_as_a_map(db: firestore.Client) -> None:
    user_id = new_user_id()
    metadata = {"deep": _nested(18), "k" * 1_400: 1, "___": [1, {"a": [2]}]}

    apply(db, user_event("user.created", user_id, public_metadata=metadata))

    stored = document(db, PATHS.users, user_id)
    assert stored is not None
    assert stored["public_metadata"] == metadata


# --- idempotency and order ------------------------------------------------------------------------


def test_duplicate_delivery_writes_once(db: firestore.Client) -> None:
    user_id = new_user_id()
    message_id = new_message_id()
    body = user_event("user.created", user_id)
    apply(db, body, message_id)
    before = snapshot_all(db)

    outcome = apply(db, body, message_id)

    record = document(db, PATHS.events, event_log.record_id(message_id))
    assert outcome is Outcome.DUPLICATE
    assert record is not None
    assert record["received_at"] == before[f"{PATHS.events}/{event_log.record_id(message_id)}"]["received_at"]
    assert snapshot_all(db) == before  # synced_at and everything else included: nothing rewritten


def test_update_before_create_keeps_the_update(db: firestore.Client) -> None:
    user_id = new_user_id()
    update = user_event("user.updated", user_id, first_name="Later", updated_at=BASE_MS + 10)
    create = user_event("user.created", user_id, first_name="Earlier", updated_at=BASE_MS)

    outcomes = [apply(db, update), apply(db, create)]

    stored = document(db, PATHS.users, user_id)
    assert outcomes == [Outcome.APPLIED, Outcome.STALE]
    assert stored is not None
    assert (stored["first_name"], stored["updated_at"]) == ("Later", ms(BASE_MS + 10))


def test_stale_update_after_newer_changes_nothing_but_is_recorded(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.updated", user_id, emails=["new@example.com"], updated_at=BASE_MS + 10))
    user_before = document(db, PATHS.users, user_id)
    claims_before = claims(db)
    stale_id = new_message_id()

    outcome = apply(
        db, user_event("user.updated", user_id, emails=["old@example.com"], updated_at=BASE_MS + 5), stale_id
    )

    record = document(db, PATHS.events, event_log.record_id(stale_id))
    assert outcome is Outcome.STALE
    assert document(db, PATHS.users, user_id) == user_before
    assert claims(db) == claims_before == {"new@example.com": user_id}
    assert record is not None
    assert record["outcome"] == "stale"


def test_same_version_delivered_again_under_another_id_applies_again(db: firestore.Client) -> None:
    user_id = new_user_id()
    body = user_event("user.updated", user_id, first_name="One", updated_at=BASE_MS)
    apply(db, body)

    outcome = apply(db, body)

    assert outcome is Outcome.APPLIED


@pytest.mark.parametrize("first", ["one", "two"])
def test_equal_updated_at_with_different_content_ends_the_same_in_either_order(
    db: firestore.Client, first: str
) -> None:
    user_id = new_user_id()
    versions = {
        name: user_event("user.updated", user_id, emails=[f"{name}@example.com"], first_name=name, updated_at=BASE_MS)
        for name in ("one", "two")
    }
    digests = {name: events.parse_event(body.encode()).digest for name, body in versions.items()}  # type: ignore[union-attr]
    winner = max(digests, key=lambda name: digests[name])
    second = "two" if first == "one" else "one"

    outcomes = [apply(db, versions[first]), apply(db, versions[second]), apply(db, versions[first])]

    stored = document(db, PATHS.users, user_id)
    assert stored is not None
    assert stored["first_name"] == winner
    assert claims(db) == {f"{winner}@example.com": user_id}
    assert outcomes[0] is Outcome.APPLIED
    assert outcomes[1] is (Outcome.APPLIED if second == winner else Outcome.STALE)


def test_update_after_delete_does_not_resurrect_user_nor_take_its_claim(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["gone@example.com"]))
    apply(db, deletion_event(user_id))

    outcome = apply(db, user_event("user.updated", user_id, emails=["gone@example.com"], updated_at=BASE_MS + 10**9))

    assert outcome is Outcome.STALE
    assert document(db, PATHS.users, user_id) is None
    assert claims(db) == {}


def test_delete_of_unknown_user_records_a_tombstone_without_personal_data(db: firestore.Client) -> None:
    user_id, message_id = new_user_id(), new_message_id()

    outcome = apply(db, deletion_event(user_id, timestamp=BASE_MS + 99), message_id)

    tombstone = document(db, PATHS.user_tombstones, user_id)
    assert outcome is Outcome.APPLIED
    assert tombstone is not None
    assert set(tombstone) == {"clerk_id", "deleted_at", "deleted_by", "recorded_at"}
    assert (tombstone["clerk_id"], tombstone["deleted_at"]) == (user_id, ms(BASE_MS + 99))
    assert tombstone["deleted_by"] == message_id  # reconcile's undo finds the tombstones a run wrote by it


def test_delete_removes_user_and_releases_claim(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["leaving@example.com"]))

    outcome = apply(db, deletion_event(user_id))

    assert outcome is Outcome.APPLIED
    assert document(db, PATHS.users, user_id) is None
    assert claims(db) == {}


def test_duplicate_delete_changes_nothing(db: firestore.Client) -> None:
    user_id = new_user_id()
    message_id = new_message_id()
    apply(db, user_event("user.created", user_id))
    apply(db, deletion_event(user_id), message_id)
    tombstone = document(db, PATHS.user_tombstones, user_id)
    before = snapshot_all(db)

    same_message = apply(db, deletion_event(user_id), message_id)
    after_same = snapshot_all(db)
    new_message = apply(db, deletion_event(user_id))

    assert same_message is Outcome.DUPLICATE
    assert after_same == before
    assert new_message is Outcome.STALE
    assert document(db, PATHS.user_tombstones, user_id) == tombstone


def test_a_deletion_again_removes_a_synced_copy_found_under_its_tombstone(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["zombie@example.com"]))
    copy = document(db, PATHS.users, user_id)
    assert copy is not None
    apply(db, deletion_event(user_id))
    tombstone = document(db, PATHS.user_tombstones, user_id)
    db.collection(PATHS.users).document(user_id).set(copy, timeout=10)  # by hand, or by a bug

    again = apply(db, deletion_event(user_id))

    assert again is Outcome.APPLIED  # Clerk never reuses ids: synced data under a tombstone is a deleted user's
    assert document(db, PATHS.users, user_id) is None
    assert document(db, PATHS.user_tombstones, user_id) == tombstone  # the first deletion's, kept


@pytest.mark.parametrize("message_id", ["msg/with/slashes", "__msg__", "..", "msg é 🙂"])
def test_any_svix_id_is_recorded_and_deduplicated(db: firestore.Client, message_id: str) -> None:
    body = user_event("user.created", new_user_id())

    outcomes = [apply(db, body, message_id), apply(db, body, message_id)]

    record = document(db, PATHS.events, event_log.record_id(message_id))
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert record is not None
    assert record["svix_id"] == message_id


def test_user_document_near_firestore_size_limit_is_stored(db: firestore.Client) -> None:
    user_id = new_user_id()
    half = 500_000
    body = user_event("user.created", user_id, public_metadata={"a": "x" * half}, unsafe_metadata={"b": "y" * half})

    outcome = apply(db, body)

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (len(stored["public_metadata"]["a"]), len(stored["unsafe_metadata"]["b"])) == (half, half)


def test_body_under_1_mib_whose_document_would_exceed_firestore_limit_is_malformed(db: firestore.Client) -> None:
    address = "a" * 600_000 + "@example.com"  # stored twice: as `email` and in `email_addresses`
    body = user_event("user.created", new_user_id(), emails=[address])
    assert len(body.encode()) < 1024 * 1024

    with pytest.raises(MalformedEvent):
        apply(db, body)

    assert snapshot_all(db) == {}


# --- email uniqueness -----------------------------------------------------------------------------


def test_email_change_releases_the_old_claim_in_the_same_event(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["old@example.com"]))

    apply(db, user_event("user.updated", user_id, emails=["new@example.com"], updated_at=BASE_MS + 1))

    assert claims(db) == {"new@example.com": user_id}


def test_removing_the_primary_email_releases_its_claim(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["only@example.com"]))

    apply(db, user_event("user.updated", user_id, emails=[], phones=["+15555550100"], updated_at=BASE_MS + 1))

    assert claims(db) == {}


def test_case_change_of_own_email_keeps_one_claim(db: firestore.Client) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id, emails=["Case@Example.com"]))

    outcome = apply(db, user_event("user.updated", user_id, emails=["case@example.COM"], updated_at=BASE_MS + 1))

    stored = document(db, PATHS.users, user_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert stored["email"] == "case@example.COM"
    assert claims(db) == {"case@example.com": user_id}


def test_spellings_of_one_address_with_slash_share_one_claim(db: firestore.Client) -> None:
    owner, other = new_user_id(), new_user_id()
    apply(db, user_event("user.created", owner, emails=["  Bob/Smith@Example.COM "]))
    before = snapshot_all(db)

    outcome = apply(db, user_event("user.created", other, emails=["bob/smith@example.com"]))

    assert outcome is Outcome.CONFLICT
    assert snapshot_all(db) == before
    assert claims(db) == {ids.document_id("bob/smith@example.com"): owner}
    assert "/" not in ids.document_id("bob/smith@example.com")


def test_email_moving_between_users_in_the_wrong_order_waits_then_applies(db: firestore.Client) -> None:
    user_a, user_b = new_user_id(), new_user_id()
    apply(db, user_event("user.created", user_a, emails=["moving@example.com"]))
    b_message = new_message_id()
    b_takes_it = user_event("user.updated", user_b, emails=["moving@example.com"], updated_at=BASE_MS + 20)
    a_lets_go = user_event("user.updated", user_a, emails=["a-new@example.com"], updated_at=BASE_MS + 10)
    before = snapshot_all(db)

    early = apply(db, b_takes_it, b_message)
    after_conflict = snapshot_all(db)
    release = apply(db, a_lets_go)
    retry = apply(db, b_takes_it, b_message)

    assert early is Outcome.CONFLICT
    assert after_conflict == before  # no user, claim or event record: the retry is not blocked
    assert release is Outcome.APPLIED
    assert retry is Outcome.APPLIED
    assert claims(db) == {"moving@example.com": user_b, "a-new@example.com": user_a}


def test_a_stored_users_blocked_address_move_waits_but_the_rest_of_the_update_is_stored(db: firestore.Client) -> None:
    user_a, user_b = new_user_id(), new_user_id()
    apply(db, user_event("user.created", user_a, emails=["a@example.com"]))
    apply(db, user_event("user.created", user_b, emails=["b@example.com"]))
    a_message = new_message_id()
    a_banned_with_b = user_event(
        "user.updated", user_a, emails=["b@example.com"], banned=True, first_name="Ann", updated_at=BASE_MS + 20
    )

    parked = apply(db, a_banned_with_b, a_message)
    while_parked = document(db, PATHS.users, user_a)
    claims_while_parked = claims(db)
    release = apply(db, user_event("user.updated", user_b, emails=["c@example.com"], updated_at=BASE_MS + 10))
    retry = apply(db, a_banned_with_b, a_message)
    moved = document(db, PATHS.users, user_a)

    assert (parked, release, retry) == (Outcome.CONFLICT, Outcome.APPLIED, Outcome.APPLIED)
    assert while_parked is not None
    assert (while_parked["banned"], while_parked["first_name"]) == (True, "Ann")  # stored at once, not after the move
    assert (while_parked["email"], while_parked[users.PENDING_FIELD]) == (None, "b@example.com")
    assert claims_while_parked == {"b@example.com": user_b}  # a@ let go, as Clerk let it go
    assert moved is not None
    assert moved["email"] == "b@example.com"
    assert users.PENDING_FIELD not in moved
    assert claims(db) == {"b@example.com": user_a, "c@example.com": user_b}


@pytest.mark.parametrize("size", [2, 3])
def test_an_address_rotation_whose_intermediate_steps_were_lost_converges_through_retries(
    db: firestore.Client, size: int
) -> None:
    # Clerk keeps addresses unique at every instant, so a rotation passes through intermediate states;
    # here none of those were delivered, only each user's final address (user i takes user i+1's).
    people = [new_user_id() for _ in range(size)]
    for index, user_id in enumerate(people):
        apply(db, user_event("user.created", user_id, emails=[f"addr{index}@example.com"]))
    takes = [f"addr{(index + 1) % size}@example.com" for index in range(size)]
    waiting = [
        (new_message_id(), user_event("user.updated", user_id, emails=[address], updated_at=BASE_MS + 50))
        for user_id, address in zip(people, takes, strict=True)
    ]

    answers = []
    for _ in range(size + 1):  # Svix's retries, in rounds
        waiting = [(message, body) for message, body in waiting if apply(db, body, message) is Outcome.CONFLICT]
        answers.append(len(waiting))

    assert waiting == [], answers
    assert claims(db) == {f"addr{(index + 1) % size}@example.com": user_id for index, user_id in enumerate(people)}
    for index, user_id in enumerate(people):
        stored = document(db, PATHS.users, user_id)
        assert stored is not None
        assert (stored["email"], users.PENDING_FIELD in stored) == (f"addr{(index + 1) % size}@example.com", False)


@pytest.mark.parametrize("owner_state", ["holds_another_address", "document_gone"])
def test_claim_whose_owner_no_longer_holds_the_address_is_taken_over(db: firestore.Client, owner_state: str) -> None:
    user_a, user_b = new_user_id(), new_user_id()
    apply(db, user_event("user.created", user_a, emails=["shared@example.com"]))
    users = db.collection(PATHS.users)
    if owner_state == "document_gone":
        users.document(user_a).delete(timeout=10)
    else:
        users.document(user_a).update({"email": "elsewhere@example.com"}, timeout=10)

    outcome = apply(db, user_event("user.created", user_b, emails=["shared@example.com"]))

    assert outcome is Outcome.APPLIED
    assert claims(db) == {"shared@example.com": user_b}


def test_two_users_without_email_do_not_conflict(db: firestore.Client) -> None:
    outcomes = [apply(db, user_event("user.created", new_user_id(), emails=[])) for _ in range(2)]

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]


# --- document ids ---------------------------------------------------------------------------------

TRICKY_IDS = [
    "a/b",
    "a%2Fb",
    "%2F",
    "/",
    "%",
    "__x__",
    "%5F_x__",
    "_",
    "._",
    ".",
    "..",
    "%2E",
    "%2E.",
    "...",
    "é",
    "%C3%A9",
    "🙂",
    "a b",
    "a+b@example.com",
    "A@example.com",
    " ",
    "",
    "x" * 1_500,
    LONG_INPUT,
    LONG_INPUT + "y",
    "é" * 600,
    "sha256-" + hashlib.sha256(LONG_INPUT.encode()).hexdigest(),
    "%sha256-" + hashlib.sha256(LONG_INPUT.encode()).hexdigest(),
]


def test_document_id_is_injective_on_tricky_inputs() -> None:
    encoded = [ids.document_id(text) for text in TRICKY_IDS]

    assert len(set(encoded)) == len(TRICKY_IDS)


@pytest.mark.parametrize("text", TRICKY_IDS, ids=range(len(TRICKY_IDS)))
def test_document_id_obeys_firestore_id_rules(text: str) -> None:
    doc_id = ids.document_id(text)

    assert doc_id
    assert "/" not in doc_id
    assert doc_id not in {".", ".."}
    assert not RESERVED_ID.fullmatch(doc_id)
    assert len(doc_id.encode()) <= 1_500


def test_document_id_keeps_ordinary_addresses_readable() -> None:
    assert ids.document_id("alice+tag@example.com") == "alice+tag@example.com"


def test_every_tricky_document_id_is_accepted_by_firestore(db: firestore.Client) -> None:
    batch = db.batch()
    for text in TRICKY_IDS:
        batch.set(db.collection(PATHS.claims).document(ids.document_id(text)), {"email": text})

    batch.commit(timeout=10)

    stored = {claim.get("email") for claim in db.collection(PATHS.claims).stream(timeout=10)}
    assert stored == set(TRICKY_IDS)


# --- Firestore trouble ----------------------------------------------------------------------------


def test_unreachable_firestore_raises_store_unavailable_and_writes_nothing(db: firestore.Client) -> None:
    apply(db, user_event("user.created", new_user_id()))
    before = snapshot_all(db)
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{emulator.free_port()}"
    unreachable = firestore.Client(project=PROJECT)

    with pytest.raises(StoreUnavailable):
        apply(unreachable, user_event("user.created", new_user_id()))

    assert snapshot_all(db) == before


def test_commit_blocked_past_the_deadline_raises_store_unavailable_and_the_retry_settles_it(
    db: firestore.Client,
) -> None:
    user_id = new_user_id()
    apply(db, user_event("user.created", user_id))
    message_id = new_message_id()
    update = user_event("user.updated", user_id, first_name="Blocked", updated_at=BASE_MS + 1)
    locked, release = threading.Event(), threading.Event()

    @firestore.transactional
    def hold(transaction: firestore.Transaction) -> None:
        list(transaction.get_all([db.collection(PATHS.users).document(user_id)], timeout=10))
        locked.set()
        release.wait(10)

    holder = threading.Thread(target=hold, args=(db.transaction(),))
    holder.start()
    try:
        assert locked.wait(10)
        with pytest.raises(StoreUnavailable):
            apply(db, update, message_id, deadline=1.0)
    finally:
        release.set()
        holder.join(15)
    # A commit that timed out may still land (it is ambiguous): all of it, never part of it.
    # The event record is in the same commit, so Svix's retry of the same message settles it.
    retry = apply(db, update, message_id)

    stored = document(db, PATHS.users, user_id)
    record = document(db, PATHS.events, event_log.record_id(message_id))
    assert not holder.is_alive()
    assert retry in {Outcome.APPLIED, Outcome.DUPLICATE}
    assert stored is not None
    assert stored["first_name"] == "Blocked"
    assert record is not None
    assert record["outcome"] == "applied"


def test_user_document_carries_no_data_outside_the_contract(db: firestore.Client) -> None:
    user_id = new_user_id()
    data = user_data(user_id)

    apply(db, json.dumps({"type": "user.created", "data": {**data, "password_enabled": True, "totp_enabled": True}}))

    stored = document(db, PATHS.users, user_id)
    assert stored is not None
    assert "password_enabled" not in stored
    assert "totp_enabled" not in stored

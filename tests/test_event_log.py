"""Event records keyed by a hash of the svix id (no write hotspot), and the migration from the old ids."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from clerk_events import new_user_id, user_event
from conftest import PATHS, apply_event
from google.cloud import firestore

from clerk_sync import event_log, events, ids
from clerk_sync.outcome import Outcome

KSUID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def svix_like_ids(count: int) -> list[str]:
    """`msg_` + a KSUID-like id: a rising timestamp prefix, then random-looking digits."""
    found = []
    for index in range(count):
        stamp = "".join(KSUID_ALPHABET[index // 62**power % 62] for power in (3, 2, 1, 0))
        found.append(f"msg_2k{stamp}{KSUID_ALPHABET[(index * 7919) % 62]}xyzXYZ")
    return found


def apply(db: firestore.Client, message_id: str, body: str) -> Outcome:
    return apply_event(db, message_id, events.parse_event(body.encode()))


def records(db: firestore.Client) -> dict[str, dict[str, object]]:
    return {document.id: document.to_dict() or {} for document in db.collection(PATHS.events).stream(timeout=10)}


def test_record_ids_do_not_follow_the_rising_order_of_svix_ids() -> None:
    message_ids = svix_like_ids(200)
    assert message_ids == sorted(message_ids)  # what Svix sends rises with time

    record_ids = [event_log.record_id(message_id) for message_id in message_ids]

    assert len(set(record_ids)) == 200
    assert all(len(record_id) == 40 and int(record_id, 16) >= 0 for record_id in record_ids)
    rising = sum(1 for before, after in itertools.pairwise(record_ids) if after > before)
    assert 60 < rising < 140  # about half, as for random keys; a time-ordered key would give 199
    first_hex = {record_id[0] for record_id in record_ids}
    assert len(first_hex) == 16  # spread over the whole key space


def test_a_record_keeps_its_svix_id_as_a_field(db: firestore.Client) -> None:
    message_id = "msg_2kAAAAexample/with slash"

    apply(db, message_id, user_event("user.created", new_user_id()))

    assert list(records(db)) == [event_log.record_id(message_id)]
    assert records(db)[event_log.record_id(message_id)]["svix_id"] == message_id


def test_a_record_written_under_the_old_id_still_answers_duplicate(db: firestore.Client) -> None:
    user_id, old_message, new_message = new_user_id(), "msg_2kOLD/1", "msg_2kNEW1"
    body = user_event("user.created", user_id)
    # What an earlier version wrote: the svix id as it is, encoded to a document id.
    db.collection(PATHS.events).document(ids.document_id(old_message)).set(
        {"svix_id": old_message, "type": "user.created", "clerk_id": user_id, "outcome": "applied"}, timeout=10
    )

    again = apply(db, old_message, body)
    fresh = apply(db, new_message, body)

    assert (again, fresh) == (Outcome.DUPLICATE, Outcome.APPLIED)
    assert set(records(db)) == {ids.document_id(old_message), event_log.record_id(new_message)}
    state = db.collection(PATHS.state).document(event_log.STATE_DOCUMENT).get(timeout=10).to_dict() or {}
    assert isinstance(state.get("hashed_since"), datetime)


def test_a_database_without_old_records_never_reads_the_old_ids(db: firestore.Client) -> None:
    user_id, message_id = new_user_id(), "msg_2kLATE1"
    apply(db, "msg_2kFIRST", user_event("user.created", user_id))  # the window is decided here: no records
    db.collection(PATHS.events).document(ids.document_id(message_id)).set({"svix_id": message_id}, timeout=10)

    outcome = apply(db, message_id, user_event("user.updated", user_id))

    assert outcome is Outcome.APPLIED  # the hand-made record under the old id was not read


def test_the_old_ids_are_no_longer_read_once_their_records_could_have_expired(db: firestore.Client) -> None:
    user_id, message_id = new_user_id(), "msg_2kEXPIRED"
    long_ago = datetime.now(UTC) - timedelta(days=31)  # EVENT_LOG_TTL_DAYS is 30
    db.collection(PATHS.state).document(event_log.STATE_DOCUMENT).set({"hashed_since": long_ago}, timeout=10)
    db.collection(PATHS.events).document(ids.document_id(message_id)).set({"svix_id": message_id}, timeout=10)

    outcome = apply(db, message_id, user_event("user.created", user_id))

    assert outcome is Outcome.APPLIED

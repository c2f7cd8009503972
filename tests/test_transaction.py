"""The transaction core against the emulator: two round trips per event, retries that name the first
attempt, and a loud failure if the pinned google-cloud-firestore changes under the private calls."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import pytest
from clerk_events import (
    BASE_MS,
    deletion_event,
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_deletion_event,
    organization_event,
    user_event,
)
from conftest import PATHS, PROJECT, ROOT, apply_event
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from rpc_count import CallCounter, counting_client

from clerk_sync import event_log, events, transaction
from clerk_sync.outcome import Outcome

COUNTED = ("BeginTransaction", "BatchGetDocuments", "RunQuery", "Commit", "Rollback")


@pytest.fixture
def counted(db: firestore.Client) -> tuple[firestore.Client, CallCounter]:
    """A client whose every call is counted, on the wiped emulator, its channel already up."""
    counter = CallCounter()
    client = counting_client(PROJECT, counter)
    list(client.collection("warm").limit(1).stream(timeout=10))
    # Once per instance, not per event: when records under the old ids may still exist.
    event_log.legacy_ids_until(client, PATHS, timedelta(days=30), threading_deadline())
    counter.take()
    return client, counter


def calls_of(client: firestore.Client, counter: CallCounter, body: str, message_id: str | None = None) -> Counter[str]:
    """Apply one event and return the calls it made, by method."""
    outcome = apply_event(client, message_id or new_message_id(), events.parse_event(body.encode()))
    taken = counter.take()
    return Counter({method: taken[method] for method in COUNTED if taken[method]} | {f"outcome={outcome}": 1})


def test_an_applied_duplicate_and_stale_user_event_each_take_a_batched_read_and_a_commit(
    counted: tuple[firestore.Client, CallCounter],
) -> None:
    client, counter = counted
    user_id, message_id = new_user_id(), new_message_id()
    create = user_event("user.created", user_id, updated_at=BASE_MS + 5)

    applied = calls_of(client, counter, create, message_id)
    duplicate = calls_of(client, counter, create, message_id)
    stale = calls_of(client, counter, user_event("user.updated", user_id, updated_at=BASE_MS))

    expected = {"BatchGetDocuments": 1, "Commit": 1}
    assert applied == Counter({**expected, "outcome=applied": 1})
    assert duplicate == Counter({**expected, "outcome=duplicate": 1})
    assert stale == Counter({**expected, "outcome=stale": 1})


def test_the_first_read_begins_the_transaction_and_the_commit_names_it(
    counted: tuple[firestore.Client, CallCounter],
) -> None:
    client, counter = counted

    apply_event(client, new_message_id(), events.parse_event(user_event("user.created", new_user_id()).encode()))

    (read_method, read), (commit_method, commit) = counter.requests
    assert (read_method, commit_method) == ("BatchGetDocuments", "Commit")
    assert read.new_transaction.read_write is not None
    assert len(read.documents) == 4  # event record, user, tombstone, email claim: one round trip
    assert commit.transaction
    assert len(commit.writes) == 3  # claim, user, event record


def test_a_conflict_reads_the_owner_in_the_same_transaction(counted: tuple[firestore.Client, CallCounter]) -> None:
    client, counter = counted
    calls_of(client, counter, user_event("user.created", new_user_id(), emails=["taken@example.com"]))

    conflict = calls_of(client, counter, user_event("user.created", new_user_id(), emails=["taken@example.com"]))

    assert conflict == Counter({"BatchGetDocuments": 2, "Commit": 1, "outcome=conflict": 1})


def test_the_owner_read_of_a_conflict_joins_the_transaction_the_first_read_began(
    counted: tuple[firestore.Client, CallCounter],
) -> None:
    client, counter = counted
    apply_event(client, new_message_id(), events.parse_event(user_event("user.created", new_user_id()).encode()))
    counter.take()

    apply_event(client, new_message_id(), events.parse_event(user_event("user.created", new_user_id()).encode()))

    (_, first), (_, second), (_, commit) = counter.requests
    assert first.new_transaction.read_write is not None
    assert second.transaction == commit.transaction
    assert second.transaction


def test_organization_and_membership_events_take_two_round_trips(
    counted: tuple[firestore.Client, CallCounter],
) -> None:
    client, counter = counted
    organization_id = new_organization_id()

    organization = calls_of(client, counter, organization_event("organization.created", organization_id))
    membership = calls_of(
        client,
        counter,
        membership_event("organizationMembership.created", new_membership_id(), organization_id, new_user_id()),
    )

    assert organization == Counter({"BatchGetDocuments": 1, "Commit": 1, "outcome=applied": 1})
    assert membership == Counter({"BatchGetDocuments": 1, "Commit": 1, "outcome=applied": 1})


def test_a_deletion_adds_one_query_per_collection_it_sweeps(counted: tuple[firestore.Client, CallCounter]) -> None:
    """A user's billing and memberships; an organization's billing, invitations and members."""
    client, counter = counted
    user_id, organization_id = new_user_id(), new_organization_id()
    calls_of(client, counter, user_event("user.created", user_id))

    user_deleted = calls_of(client, counter, deletion_event(user_id))
    organization_deleted = calls_of(client, counter, organization_deletion_event(organization_id))

    assert user_deleted == Counter({"BatchGetDocuments": 1, "Commit": 1, "RunQuery": 2, "outcome=applied": 1})
    assert organization_deleted == Counter({"BatchGetDocuments": 1, "Commit": 1, "RunQuery": 3, "outcome=applied": 1})


def test_contention_re_runs_the_body_naming_the_first_attempt_as_retry_transaction(db: firestore.Client) -> None:
    counter = CallCounter()
    client = counting_client(PROJECT, counter)
    target = client.collection("contended").document("one")
    target.set({"n": 0}, timeout=10)
    counter.take()
    both_read = threading.Barrier(2, timeout=20)
    attempts: list[int] = []
    lock = threading.Lock()

    def body(attempt: transaction.Attempt) -> None:
        snapshot = attempt.read([target])[target.path]
        with lock:
            attempts.append(1)
            first_round = len(attempts) <= 2
        if first_round:
            both_read.wait()  # both hold a read lock on the document before either writes
        attempt.set(target, {"n": (snapshot.to_dict() or {})["n"] + 1})

    errors: list[BaseException] = []

    def contender() -> None:
        try:
            transaction.run(client, deadline=threading_deadline(), body=body)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    reads = [request for method, request in counter.requests if method == "BatchGetDocuments"]
    retries = [request.new_transaction.read_write.retry_transaction for request in reads]
    assert errors == []
    assert target.get(timeout=10).to_dict() == {"n": 2}  # both increments, neither lost
    assert len(attempts) >= 3
    assert not retries[0]
    assert any(retries), "a re-run must name the aborted transaction"


def threading_deadline() -> float:
    """A generous deadline: the emulator aborts a blocked lock only after about 2 s."""
    return time.monotonic() + 14.0


def test_the_pinned_library_still_has_what_the_core_relies_on(db: firestore.Client) -> None:
    pinned = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)

    assert metadata.version("google-cloud-firestore") == pinned["google-cloud-firestore"]
    assert callable(_helpers.decode_dict)
    assert db._firestore_api._transport.grpc_channel is not None
    assert isinstance(db._database_string, str)
    assert isinstance(db._rpc_metadata, list)
    assert db._client_info.to_grpc_metadata()[0] == "x-goog-api-client"


def test_the_batched_read_runs_on_the_calling_thread_and_the_library_stubs_do_not(db: firestore.Client) -> None:
    pinned = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    channel = db._firestore_api._transport.grpc_channel

    stubs = transaction._stubs_for(db)
    library_stub = channel.unary_stream("/google.firestore.v1.Firestore/RunQuery")

    assert metadata.version("grpcio") == pinned["grpcio"]  # a new grpcio must pass this test again
    assert type(stubs.batch_get).__name__ == "_SingleThreadedUnaryStreamMultiCallable"
    assert type(library_stub).__name__ == "_UnaryStreamMultiCallable"  # the switch is off again
    outcome = transaction.run(db, threading_deadline(), lambda attempt: len(attempt.read([db.document("a/b")])))
    assert outcome == 1  # the single-threaded stub reads, and the commit after it ends the transaction


def test_reads_decode_every_value_as_the_library_does(db: firestore.Client) -> None:
    written = db.collection(PATHS.users).document("user_every_value")
    written.set({**EVERY_VALUE, "when": firestore.SERVER_TIMESTAMP}, timeout=10)
    missing = db.collection(PATHS.users).document("user_never_written")
    library = {snapshot.reference.path: snapshot for snapshot in db.get_all([written, missing], timeout=10)}
    attempt = transaction.Attempt(db, threading_deadline(), None)

    ours = attempt.read([written, missing])
    attempt.rollback()

    assert set(ours) == set(library) == {written.path, missing.path}
    for path, snapshot in ours.items():
        assert snapshot.exists == library[path].exists
        assert snapshot.to_dict() == library[path].to_dict()
        assert (snapshot.create_time, snapshot.update_time) == (library[path].create_time, library[path].update_time)
    stored = ours[written.path].to_dict() or {}
    assert stored["precise"].microsecond == 123_456  # Firestore keeps microseconds
    assert isinstance(stored["when"], datetime)


EVERY_VALUE: dict[str, Any] = {
    "null": None,
    "flag": True,
    "off": False,
    "count": 2**63 - 1,
    "negative": -(2**63),
    "ratio": 0.25,
    "text": "Zoë 🙂 \u0000 end",
    "empty_text": "",
    "moment": datetime(2025, 8, 28, 12, 0, 0, 138_000, tzinfo=UTC),
    "early": datetime(1, 1, 1, tzinfo=UTC),
    "late": datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
    "naive": datetime(2025, 1, 2, 3, 4, 5, 6),
    "precise": DatetimeWithNanoseconds(2025, 1, 2, 3, 4, 5, nanosecond=123_456_789, tzinfo=UTC),  # type: ignore[no-untyped-call]
    "raw": b"\x00\xff",
    "strings": ["a", "b"],
    "empty_list": [],
    "empty_map": {},
    "nested": {"a": {"b": [1, {"c": None}], "d": 1.5}, "e": [], "weird key.with `dots`": "ok"},
}


@pytest.mark.parametrize(
    "case",
    ["merge with transform and deletions", "no merge with transform", "no merge, values only", "merge, values only"],
)
def test_write_protobufs_are_those_the_library_builds(db: firestore.Client, case: str) -> None:
    reference = db.collection(PATHS.users).document("user_same")
    data: dict[str, Any] = dict(EVERY_VALUE)
    merge: list[str] = []
    if "transform" in case:
        data["synced_at"] = firestore.SERVER_TIMESTAMP
    if "deletions" in case:
        data["gone"] = firestore.DELETE_FIELD
    if case.startswith("merge"):
        merge = sorted(data)
    library: Any = db.batch()
    library.set(reference, data, merge=merge or False)
    ours = transaction.Attempt(db, threading_deadline(), None)

    ours.set(reference, data, merge=merge)
    ours.delete(reference)
    library.delete(reference)

    assert ours.write_count == 2
    assert [pb.SerializeToString(deterministic=True) for pb in ours._writes] == [
        type(pb).pb(pb).SerializeToString(deterministic=True) for pb in library._write_pbs
    ]


def test_a_value_the_sync_never_writes_is_refused_before_anything_is_sent(db: firestore.Client) -> None:
    attempt = transaction.Attempt(db, threading_deadline(), None)
    reference = db.collection(PATHS.users).document("user_odd")

    with pytest.raises(TypeError, match="set is not written"):
        attempt.set(reference, {"odd": {1, 2}})
    with pytest.raises(ValueError, match="DELETE_FIELD needs merge"):
        attempt.set(reference, {"gone": firestore.DELETE_FIELD})
    with pytest.raises(ValueError, match="does not hold"):
        attempt.set(reference, {"a": 1}, merge=["a", "b"])
    assert attempt.write_count == 0


def test_reads_after_writes_are_refused_as_firestore_requires(db: firestore.Client) -> None:
    reference = db.collection(PATHS.users).document(new_user_id())

    def body(attempt: transaction.Attempt) -> Outcome:
        attempt.read([reference])
        attempt.set(reference, {"x": 1})
        attempt.read([reference])
        return Outcome.APPLIED

    with pytest.raises(RuntimeError, match="reads must come before writes"):
        transaction.run(db, deadline=threading_deadline(), body=body)
    assert not reference.get(timeout=10).exists

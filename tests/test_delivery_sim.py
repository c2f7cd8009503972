"""Messy Svix delivery of a legal Clerk history ends in exactly Clerk's final state.

The simulated runs print their seed in every failure; `SIM_SEED=N make test` (or `make soak`)
replays the same history and delivery plan (thread timing still varies from run to run).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import delivery_sim
import pytest
from conftest import PATHS, Server
from google.cloud import firestore

from clerk_sync import ids
from clerk_sync.users import normalise_email

QUICK = {"users": 40, "events_target": 400}
SOAK = {"users": 400, "events_target": 10_000}


def run_simulation(
    server: Server, db: firestore.Client, *, users: int, events_target: int, concurrency: int = 8, window: float = 8
) -> None:
    """Generate, deliver with retries, and compare Firestore with Clerk's final state."""
    seed = delivery_sim.seed_from_environment()
    print(f"SIM_SEED={seed}")
    history = delivery_sim.generate(seed, users=users, events_target=events_target)
    rng = random.Random(f"{seed}-delivery")
    deliveries = delivery_sim.plan(history.events, rng, duplicate_share=0.1, window=window)
    shared_at_checkpoints: list[dict[str, list[str]]] = []

    def checkpoint() -> None:
        shared = delivery_sim.shared_primary_emails(db)
        if shared:
            shared_at_checkpoints.append(shared)

    report = delivery_sim.deliver(
        server.url,
        deliveries,
        rng=rng,
        concurrency=concurrency,
        wall_seconds=max(90.0, events_target / 10),
        checkpoint=checkpoint,
        checkpoint_every=40,
    )
    print(f"SIM_SEED={seed}: {report.summary()}; stories {dict(history.stories)}")

    assert not report.undelivered, f"SIM_SEED={seed}: {len(report.undelivered)} undelivered; {report.summary()}"
    assert report.checkpoints >= events_target // 40
    assert not shared_at_checkpoints, f"SIM_SEED={seed}: users shared a primary email: {shared_at_checkpoints[:3]}"
    unexpected = {status for status in report.statuses() if status not in {200, 409, 503}}
    assert not unexpected, f"SIM_SEED={seed}: statuses {unexpected} seen; {report.summary()}"
    problems = delivery_sim.final_state_problems(db, history, report.attempts, server.log())
    assert not problems, "\n".join(problems[:30])


def test_messy_delivery_of_a_quick_history_converges_to_clerks_final_state(
    server: Server, db: firestore.Client
) -> None:
    run_simulation(server, db, **QUICK)


@pytest.mark.soak
def test_messy_delivery_of_a_long_history_converges_to_clerks_final_state(server: Server, db: firestore.Client) -> None:
    run_simulation(server, db, **SOAK, concurrency=16, window=32)


# The simulator itself: its histories must be legal and its checks must bite, or a passing run
# proves nothing.


def test_final_state_check_notices_each_kind_of_divergence(server: Server, db: firestore.Client) -> None:
    history = delivery_sim.generate(77, users=8, events_target=60)
    rng = random.Random(77)
    report = delivery_sim.deliver(
        server.url, delivery_sim.plan(history.events, rng, duplicate_share=0.2, window=3), rng=rng
    )
    log_text = server.log()
    assert not report.undelivered
    assert delivery_sim.final_state_problems(db, history, report.attempts, log_text) == []
    live_id, live = next((uid, doc) for uid, doc in history.expected_documents().items() if doc["email"])
    gone_id = next(iter(history.deleted))
    record_id = ids.document_id(history.user_events[-1].svix_id)
    users, records = db.collection(PATHS.users), db.collection(PATHS.events)
    saved_record = records.document(record_id).get(timeout=10).to_dict() or {}
    dropped_line = next(line for line in log_text.splitlines() if history.user_events[0].svix_id in line)

    def problems() -> str:
        return "\n".join(delivery_sim.final_state_problems(db, history, report.attempts, log_text))

    users.document(live_id).update({"first_name": "Mallory"})
    assert f"users/{live_id} differs from its last Clerk state in ['first_name']" in problems()
    users.document(live_id).update({"first_name": live["first_name"]})

    users.document(gone_id).set({**live, "clerk_id": gone_id})
    assert "exists next to its tombstone" in problems()
    assert delivery_sim.shared_primary_emails(db) == {normalise_email(live["email"]): sorted([live_id, gone_id])}
    users.document(gone_id).delete()

    records.document(record_id).delete()
    assert "no applied/stale record" in problems()
    records.document(record_id).set(saved_record)

    db.collection(PATHS.claims).document("stray@example.com").set({"email": "stray@example.com", "clerk_id": live_id})
    assert "email claims differ" in problems()
    db.collection(PATHS.claims).document("stray@example.com").delete()

    assert problems() == ""
    log_text = log_text.replace(dropped_line, "")
    assert "log lines do not match" in problems()


# The generator.


def test_same_seed_writes_the_same_history() -> None:
    first = delivery_sim.generate(41, **QUICK)
    again = delivery_sim.generate(41, **QUICK)
    other = delivery_sim.generate(42, **QUICK)

    assert [event.body for event in first.events] == [event.body for event in again.events]
    assert [event.body for event in first.events] != [event.body for event in other.events]


@pytest.mark.parametrize("seed", [1, 2, 3, 1234, 99991])
def test_generated_history_obeys_clerks_rules(seed: int) -> None:
    history = delivery_sim.generate(seed, **QUICK)

    holder: dict[str, str] = {}  # normalised address -> live user holding it now
    last_updated: dict[str, int] = {}
    deleted: set[str] = set()
    final: dict[str, str] = {}
    for event in history.events:
        envelope = json.loads(event.body)
        data = envelope["data"]
        if event.user_id is None:
            assert envelope["type"] in delivery_sim.IGNORED_TYPES
            continue
        user_id = data["id"]
        assert user_id == event.user_id
        assert user_id not in deleted, f"seed {seed}: event after deletion"
        if envelope["type"] == "user.deleted":
            assert set(data) == {"deleted", "id", "object"}
            deleted.add(user_id)
            final.pop(user_id)
            holder = {key: owner for key, owner in holder.items() if owner != user_id}
            continue
        assert (envelope["type"] == "user.created") == (user_id not in last_updated)
        assert data["updated_at"] > last_updated.get(user_id, 0)
        assert envelope["timestamp"] == data["updated_at"]
        last_updated[user_id] = data["updated_at"]
        entry_ids = {entry["id"] for entry in data["email_addresses"]}
        assert data["primary_email_address_id"] in entry_ids | {None}
        addresses = {normalise_email(entry["email_address"]) for entry in data["email_addresses"]}
        holder = {key: owner for key, owner in holder.items() if owner != user_id}
        for key in addresses:
            assert key not in holder, f"seed {seed}: {user_id} took an address another user still holds"
            holder[str(key)] = user_id
        final[user_id] = event.body

    assert final == history.final_bodies
    assert deleted == history.deleted


def test_generated_history_tells_every_story() -> None:
    history = delivery_sim.generate(5, **QUICK)

    primary_owners: defaultdict[str, set[str]] = defaultdict(set)
    for event in history.user_events:
        data = json.loads(event.body)["data"]
        primary = data.get("primary_email_address_id")
        for entry in data.get("email_addresses", []):
            if entry["id"] == primary:
                primary_owners[normalise_email(entry["email_address"]) or ""].add(data["id"])
    moved = [key for key, owners in primary_owners.items() if len(owners) > 1]
    documents = history.expected_documents()

    assert moved, "no address became the primary email of a second user"
    for story in ("move_email", "primary_change", "drop_email", "delete", "reuse_after_delete", "metadata"):
        assert history.stories[story] > 0, story
    assert any(doc["email"] is None and doc["phone_number"] for doc in documents.values())
    assert history.ignored_events
    assert 0.8 * QUICK["events_target"] <= len(history.user_events) < QUICK["events_target"]


def test_delivery_plan_sends_every_event_with_some_duplicates_out_of_order() -> None:
    history = delivery_sim.generate(11, **QUICK)

    deliveries = delivery_sim.plan(history.events, random.Random(11), duplicate_share=0.1, window=8)

    orders = [delivery.event.order for delivery in deliveries if delivery.copy == 0]
    assert sorted(orders) == list(range(len(history.events)))
    assert orders != sorted(orders)
    assert all(abs(position - order) <= 16 for position, order in enumerate(orders))
    assert 10 <= sum(delivery.copy == 1 for delivery in deliveries) <= 60


def test_backoff_grows_to_its_cap() -> None:
    backoff = delivery_sim.Backoff(first_seconds=0.01, factor=2, cap_seconds=0.2)
    rng = random.Random(0)

    delays = [backoff.delay(failures, rng) for failures in range(1, 12)]

    assert delays[0] < 0.02
    assert max(delays) <= 0.3
    assert delays[-1] >= 0.1

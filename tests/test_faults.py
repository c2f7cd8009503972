"""Firestore paused, unreachable, contended, and a crash before commit: 503s, nothing half-written.

Each test starts its own emulator (never the shared one) and its own functions-framework
server with a 2 s Firestore deadline, so a fault costs seconds, not Svix's 15. The histories
come from the delivery simulator; `SIM_SEED=N` replays them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import delivery_sim
import emulator
import pytest
from clerk_events import BASE_MS, new_message_id, user_event
from conftest import PATHS, PROJECT, ROOT, Server, snapshot_all, start_server, stop_server
from google.cloud import firestore

from clerk_sync import event_log

DEADLINE_SECONDS = 2.0
# The function answers within its Firestore deadline plus a rollback (<= 0.5 s once the deadline
# is spent); the margin is for a loaded 2-core machine, and Svix's own limit is 15 s.
ANSWER_LIMIT_SECONDS = DEADLINE_SECONDS + 5.0
SVIX_LIMIT_SECONDS = 15.0
SETTLE_TIMEOUT_SECONDS = 15.0


@dataclass
class Dedicated:
    """An emulator for one test only, and a client on it."""

    process: subprocess.Popen[bytes]
    host: str
    db: firestore.Client

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[Dedicated]:
    """A fresh emulator this test may pause or break; stopped (and resumed first) at the end."""
    process, host = emulator.start(None, tmp_path / "dedicated-emulator.log")
    try:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host  # our client; the autouse fixture restores it
        db = firestore.Client(project=PROJECT)
        warm_up(db)
        yield Dedicated(process, host, db)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
        emulator.stop(process)


def warm_up(db: firestore.Client) -> None:
    """A fresh emulator's first transactions are slow (its JIT warming up), which is not the fault a
    test stages: a few transactions first, with generous bounds, then the wipe."""
    reference = db.collection("warm_up").document("one")

    @firestore.transactional
    def touch(transaction: firestore.Transaction) -> None:
        list(transaction.get_all([reference], timeout=60))
        transaction.set(reference, {"n": 1})

    for _ in range(5):
        touch(db.transaction())
    reference.delete(timeout=60)


@contextlib.contextmanager
def serving(tmp_path: Path, host: str, *, threads: int = 8, source: Path = ROOT / "main.py") -> Iterator[Server]:
    """A functions-framework server on `host` with the short deadline; stopped on exit."""
    environment = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": host,
        "FIRESTORE_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        "THREADS": str(threads),
        "PYTHONPATH": str(ROOT),
    }
    server = start_server(tmp_path, environment, source=source)
    try:
        yield server
    finally:
        stop_server(server)


def settle(db: firestore.Client) -> None:
    """Wait until the database stops changing (commits that were in flight have landed)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    previous = snapshot_all(db)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = snapshot_all(db)
        if current == previous:
            return
        previous = current
    raise AssertionError(f"the database kept changing for {SETTLE_TIMEOUT_SECONDS}s")


def test_paused_firestore_answers_503_in_time_writes_nothing_half_and_retries_converge(
    dedicated: Dedicated, tmp_path: Path
) -> None:
    seed = delivery_sim.seed_from_environment()
    history = delivery_sim.generate(seed, users=12, events_target=90)
    rng = random.Random(f"{seed}-pause")
    before, during, after = history.events[:30], history.events[30:60], history.events[60:]
    with serving(tmp_path, dedicated.host) as server:
        warm = delivery_sim.deliver(server.url, delivery_sim.plan(before, rng, duplicate_share=0.1, window=4), rng=rng)
        assert not warm.undelivered, f"SIM_SEED={seed}: {warm.summary()}"
        answered: list[delivery_sim.Attempt] = []
        paused_at: list[float] = []

        def pause_after_four_answers(attempt: delivery_sim.Attempt) -> None:
            # Some requests are still in flight when Firestore stops: they may or may not commit.
            answered.append(attempt)
            if len(answered) >= 4 and not paused_at:
                dedicated.pause()
                paused_at.append(time.monotonic())

        try:
            stalled = delivery_sim.deliver(
                server.url,
                delivery_sim.plan(during, rng, duplicate_share=0.0, window=4),
                rng=rng,
                max_attempts=1,
                on_attempt=pause_after_four_answers,
            )
            resumed_at = time.monotonic()
        finally:
            dedicated.resume()
        assert emulator.answers(dedicated.host, timeout=10)
        settle(dedicated.db)
        half_written = delivery_sim.consistency_problems(dedicated.db, history)

        rest = [delivery for delivery in stalled.deliveries if not delivery.last or not delivery.last.succeeded]
        rest += delivery_sim.plan(after, rng, duplicate_share=0.1, window=4)
        rest += delivery_sim.plan(rng.sample(before + during, 10), rng, duplicate_share=0.0, window=4)
        # Transactions that were mid-way when Firestore stopped keep their locks until they expire
        # (60 s on the emulator); their users' deliveries get 503s until then, and a user waiting for
        # one of them to release an address gets 409s as long. Svix retries for days, so the attempts
        # are bounded by the wall time here, not by the 60-attempt default (~60 s at the 1 s cap).
        recovered = delivery_sim.deliver(server.url, rest, rng=rng, max_attempts=1000, wall_seconds=150)
        log_text = server.log()

    by_id = {event.svix_id: event for event in history.events}
    in_pause = [attempt for attempt in stalled.attempts if paused_at and attempt.started > paused_at[0]]
    user_answers = {attempt.status for attempt in in_pause if by_id[attempt.svix_id].user_id is not None}
    other_answers = {attempt.outcome for attempt in in_pause if by_id[attempt.svix_id].user_id is None}
    slowest = max(attempt.seconds for attempt in stalled.attempts)
    converged = max(attempt.finished for attempt in recovered.attempts) - resumed_at
    print(
        f"SIM_SEED={seed}: {len(in_pause)} requests in the pause, slowest answer {slowest:.1f} s; "
        f"converged {converged:.0f} s after SIGCONT; {recovered.summary()}"
    )
    assert paused_at, f"SIM_SEED={seed}: never paused"
    assert len(in_pause) >= 10
    assert user_answers == {503}, f"SIM_SEED={seed}: {user_answers}"
    assert other_answers <= {"ignored"}
    assert slowest < min(ANSWER_LIMIT_SECONDS, SVIX_LIMIT_SECONDS), f"SIM_SEED={seed}: {slowest:.1f} s"
    assert resumed_at - paused_at[0] >= DEADLINE_SECONDS
    assert half_written == [], "\n".join(half_written)
    assert not recovered.undelivered, f"SIM_SEED={seed}: {recovered.summary()}"
    problems = delivery_sim.final_state_problems(
        dedicated.db, history, warm.attempts + stalled.attempts + recovered.attempts, log_text
    )
    assert problems == [], "\n".join(problems[:30])


def test_firestore_unreachable_at_start_up_answers_503_and_the_same_instance_recovers(tmp_path: Path) -> None:
    seed = delivery_sim.seed_from_environment()
    history = delivery_sim.generate(seed, users=6, events_target=30)
    rng = random.Random(f"{seed}-unreachable")
    port = emulator.free_port()  # nothing listens here until the emulator starts below
    host = f"127.0.0.1:{port}"
    with serving(tmp_path, host) as server:
        refused = delivery_sim.deliver(
            server.url,
            delivery_sim.plan(history.events[:12], rng, duplicate_share=0, window=2),
            rng=rng,
            max_attempts=1,
        )
        process, _ = emulator.start(None, tmp_path / "late-emulator.log", port=port)
        try:
            up_at = time.monotonic()
            os.environ["FIRESTORE_EMULATOR_HOST"] = host
            db = firestore.Client(project=PROJECT)
            recovered = delivery_sim.deliver(
                server.url,
                delivery_sim.plan(history.events, rng, duplicate_share=0.1, window=4),
                rng=rng,
                wall_seconds=90,
            )
            first_success = min(attempt.finished for attempt in recovered.attempts if attempt.outcome == "applied")
            problems = delivery_sim.final_state_problems(
                db, history, refused.attempts + recovered.attempts, server.log()
            )
        finally:
            emulator.stop(process)

    by_id = {event.svix_id: event for event in history.events}
    user_answers = {attempt.status for attempt in refused.attempts if by_id[attempt.svix_id].user_id is not None}
    print(
        f"SIM_SEED={seed}: first applied event {first_success - up_at:.1f} s after the emulator answered; "
        f"{recovered.summary()}"
    )
    assert user_answers == {503}, f"SIM_SEED={seed}: {user_answers}"
    assert max(attempt.seconds for attempt in refused.attempts) < ANSWER_LIMIT_SECONDS
    assert not recovered.undelivered, f"SIM_SEED={seed}: {recovered.summary()}"
    assert problems == [], "\n".join(problems[:30])


def test_many_concurrent_events_for_one_user_on_two_instances_converge_to_the_newest(
    dedicated: Dedicated, tmp_path: Path
) -> None:
    seed = delivery_sim.seed_from_environment()
    history = delivery_sim.single_user_history(seed, updates=47)
    rng = random.Random(f"{seed}-contention")
    deliveries = delivery_sim.plan(history.events, rng, duplicate_share=0.2, window=len(history.events))
    # Two instances, as Cloud Functions scales out: each serialises one user's deliveries inside
    # itself, so only Firestore's transactions stand between the two.
    with (
        serving(tmp_path, dedicated.host, threads=16) as first,
        serving(tmp_path, dedicated.host, threads=16) as second,
    ):
        report = delivery_sim.deliver([first.url, second.url], deliveries, rng=rng, concurrency=16, wall_seconds=120)
        log_text = first.log() + second.log()

    statuses = report.statuses()
    print(f"SIM_SEED={seed}: {report.summary()}")
    assert not report.undelivered, f"SIM_SEED={seed}: {report.summary()}"
    assert set(statuses) <= {200, 503}, f"SIM_SEED={seed}: {statuses}"
    problems = delivery_sim.final_state_problems(dedicated.db, history, report.attempts, log_text)
    assert problems == [], "\n".join(problems[:30])


def test_crash_between_verification_and_commit_writes_nothing_and_the_retry_succeeds(
    dedicated: Dedicated, tmp_path: Path
) -> None:
    user_id = "user_crash0001"
    created = delivery_sim.SimEvent(
        new_message_id(), "user.created", user_id, user_event("user.created", user_id, emails=["old@example.com"]), 0, 0
    )
    body = user_event("user.updated", user_id, emails=["new@example.com"], updated_at=BASE_MS + 1000)
    update = delivery_sim.SimEvent(new_message_id(), "user.updated", user_id, body, 1, BASE_MS + 1000)
    with serving(tmp_path, dedicated.host) as server:
        assert delivery_sim.post(server.url, created).succeeded
    before = snapshot_all(dedicated.db)
    marker = tmp_path / "crashed"
    os.environ["CRASH_MARKER"] = str(marker)

    with serving(tmp_path, dedicated.host, source=ROOT / "tests" / "crash_target.py") as doomed:
        crashed = delivery_sim.post(doomed.url, update, timeout=10)
    after_crash = snapshot_all(dedicated.db)
    # The dead instance's transaction still holds its read locks until Firestore expires it
    # (60 s on the emulator), so Svix's early retries get 503s and a later one succeeds.
    with serving(tmp_path, dedicated.host) as fresh:
        retry = delivery_sim.deliver(
            fresh.url,
            [delivery_sim.Delivery(update, 0)],
            rng=random.Random(0),
            max_attempts=100,
            backoff=delivery_sim.Backoff(first_seconds=0.5, factor=2, cap_seconds=2),
            wall_seconds=120,
        )

    claims = {document.id: document.get("clerk_id") for document in dedicated.db.collection(PATHS.claims).stream()}
    stored = dedicated.db.collection(PATHS.users).document(user_id).get().to_dict() or {}
    record = dedicated.db.collection(PATHS.events).document(event_log.record_id(update.svix_id)).get().to_dict() or {}
    print(f"retry after the crash: {retry.summary()}, statuses {dict(retry.statuses())}")
    assert crashed.status is None  # the instance died without answering
    assert marker.read_text().startswith("4 writes prepared")  # new claim, old claim, user, record
    assert after_crash == before
    assert retry.deliveries[0].last is not None
    assert (retry.deliveries[0].last.status, retry.deliveries[0].last.outcome) == (200, "applied")
    assert set(retry.statuses()) <= {200, 503}
    assert stored["email"] == "new@example.com"
    assert claims == {"new@example.com": user_id}
    assert record["outcome"] == "applied"

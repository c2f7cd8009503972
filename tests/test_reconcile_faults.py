"""Reconcile when things go wrong or change under it: Clerk unreachable or slow, Firestore stalled, the
lease taken over, Clerk changing between pages, a run resumed later. Every case ends in a summary
and an exit code, never a traceback, and nothing a later run needs is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import emulator
import pytest
from clerk_api import BASE_MS, SECRET_KEY, FakeClerk, api_user, serve
from conftest import PATHS
from google.cloud import firestore
from reconcile_runs import STATE, clerk_users, counts, deliver, documents, run_cli, summary_of

from clerk_sync.reconcile import lease

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def state(db: firestore.Client) -> dict[str, Any]:
    return db.document(STATE).get(timeout=10).to_dict() or {}


# --- Clerk unreachable, refused, slow ---------------------------------------------------------------


@pytest.mark.usefixtures("secret_key", "db")
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry_run"])
def test_an_unreachable_clerk_stops_the_run_within_seconds_and_promises_no_resumption(
    emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    nobody = FakeClerk([])
    nobody.url = f"http://127.0.0.1:{emulator.free_port()}/v1"  # nothing listens there
    started = time.monotonic()

    code, out, err = run_cli(capsys, nobody, tmp_path, emulator_host, "reconcile", "--json",
                             *(["--dry-run"] if dry_run else []))  # fmt: skip

    summary = summary_of(out)
    assert code == 1
    assert (summary["stop_reason"], summary["clerk_requests"]) == ("clerk_unavailable", 3)
    assert "GET /instance still failing after 3 attempts (ConnectError)" in summary["stopped"]
    assert time.monotonic() - started < 15  # was 97 s and 16 requests
    assert "resumes" not in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("secret_key")
def test_clerk_refusing_midway_stops_and_says_the_next_run_resumes(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(12), path_faults={("/v1/users", 1): (403, {})})

    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")

    summary = summary_of(out)
    assert (code, summary["stop_reason"], summary["checkpointed"]) == (1, "clerk_unavailable", True)
    assert "Clerk refused GET /users?order_by=+created_at&starting_after=user_rc0004: 403" in summary["stopped"]
    assert "the next run resumes from the checkpoint" in err
    assert (state(db)["full"]["phase"], state(db)["full"]["offset"]) == (2, 5)  # users: after permissions, roles
    assert "lease_owner" not in state(db)  # released: the next run need not wait


@pytest.mark.usefixtures("secret_key")
def test_deletions_confirmed_by_a_slow_clerk_never_hold_a_firestore_read_open(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scaled down from a 300 s stream deadline: reads time out after 1 s, each of 6 confirmations takes 0.4 s."""
    users = clerk_users(10)
    clerk = FakeClerk(users)
    with serve(clerk):
        run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")
        clerk.users = users[:4]
        for user in users[4:]:
            clerk.after[(f"/v1/users/{user['id']}", 0)] = lambda: time.sleep(0.4)

        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--timeout", "1", "--json")

    assert (code, summary_of(out)["outcome"]) == (0, "repaired")
    assert counts(summary_of(out), "users")["extra"] == 6
    assert sorted(documents(db, PATHS.users)) == [user["id"] for user in users[:4]]


# --- Firestore stalling mid-run -----------------------------------------------------------------------


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """An emulator of this test's own and a way to stall it (SIGSTOP), resumed and stopped at the end."""
    process, host = emulator.start(None, tmp_path / "stalling-emulator.log")
    try:
        yield host, lambda: os.killpg(process.pid, signal.SIGSTOP)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
        emulator.stop(process)


@pytest.mark.usefixtures("secret_key")
def test_firestore_stalling_during_the_deletions_ends_in_a_summary_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stalling: tuple[str, Any]
) -> None:
    host, stall = stalling
    users = clerk_users(6)
    clerk = FakeClerk(users)
    with serve(clerk):
        assert run_cli(capsys, clerk, tmp_path, host, "backfill")[0] == 0  # also warms the new emulator up
        monkeypatch.setenv("FIRESTORE_DEADLINE_SECONDS", "1")
        clerk.users = users[:3]
        clerk.after[(f"/v1/users/{users[5]['id']}", 0)] = stall  # Firestore stops once Clerk confirms the last

        started = time.monotonic()
        code, out, err = run_cli(capsys, clerk, tmp_path, host, "reconcile", "--timeout", "1", "--json")

    summary = summary_of(out)
    assert code == 1
    assert summary["stop_reason"] == "firestore_unavailable"
    assert summary["stopped"].startswith("Firestore failed")
    assert summary["checkpointed"]
    assert "the next run resumes from the checkpoint" in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 30


# --- the lease ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("secret_key")
def test_a_run_whose_lease_another_took_stops_and_leaves_the_other_s_lease_alone(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(12))
    until = datetime.now(UTC) + timedelta(minutes=4)

    def another_run_takes_the_lease() -> None:  # as if this run had stalled past its lease
        db.document(STATE).set({"lease_until": until, "lease_owner": "another-run"}, merge=True)

    clerk.after[("/v1/users", 0)] = another_run_takes_the_lease
    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")

    summary = summary_of(out)
    assert (code, summary["stop_reason"]) == (1, "lease_lost")
    assert (state(db)["lease_owner"], state(db)["lease_until"]) == ("another-run", until)
    # The checkpoint saved before the lease was lost (permissions and roles done), none after it.
    assert (state(db)["full"]["phase"], state(db)["full"]["offset"]) == (2, 0)
    assert len(documents(db, PATHS.users)) == 5  # the first page was repaired before the lease was checked


@pytest.mark.usefixtures("secret_key")
def test_an_incremental_run_renews_its_lease_after_every_page(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(datetime.now(UTC).timestamp() * 1000)
    users = [api_user(f"user_lease{index:02d}", email=f"l{index}@example.com", created_at=now, updated_at=now + index)
             for index in range(12)]  # fmt: skip
    clerk = FakeClerk(users)
    leases: list[datetime] = []
    for page in range(3):
        clerk.after[("/v1/users", page)] = lambda: leases.append(state(db)["lease_until"])

    with serve(clerk):
        code, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                             "--page-size", "5")  # fmt: skip

    assert code == 0
    assert len(leases) == 3
    assert leases[0] < leases[1] < leases[2]  # renewed after the first and the second page
    assert "lease_owner" not in state(db)


# --- incremental runs while Clerk changes ----------------------------------------------------------


def changed_users(count: int, since_ms: int) -> list[dict[str, Any]]:
    """`count` users, all changed after `since_ms`, the newest last."""
    return [
        api_user(f"user_inc{index:03d}", email=f"inc{index}@example.com", created_at=BASE_MS,
                 updated_at=since_ms + 60_000 + index * 1000, first_name="Changed")
        for index in range(count)
    ]  # fmt: skip


def stale_copies(db: firestore.Client, users: list[dict[str, Any]]) -> None:
    """Firestore holds every user as it was before the change, and the last run's starting point."""
    for user in users:
        deliver(db, f"msg_old_{user['id']}", "user.updated",
                {**user, "first_name": "Before", "updated_at": BASE_MS})  # fmt: skip


@pytest.mark.usefixtures("secret_key")
def test_a_deletion_in_clerk_during_an_incremental_run_skips_no_changed_user(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
    users = changed_users(12, since)
    stale_copies(db, users)
    db.document(STATE).set({"incremental_since_ms": since})
    clerk = FakeClerk(users)
    newest = users[-1]  # on the first page (newest first); deleted once that page was served
    clerk.after[("/v1/users", 0)] = lambda: clerk.users.remove(newest)

    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                               "--page-size", "5", "--json")  # fmt: skip

    stored = documents(db, PATHS.users)
    assert code == 0
    assert counts(summary_of(out), "users")["outdated"] == 12
    assert all(stored[user["id"]]["first_name"] == "Changed" for user in users)


@pytest.mark.usefixtures("secret_key")
def test_more_deletions_than_the_overlap_hold_the_next_incremental_start_back(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
    users = changed_users(12, since)
    stale_copies(db, users)
    db.document(STATE).set({"incremental_since_ms": since})
    clerk = FakeClerk(users)
    first_page = users[-5:]  # newest first: users 11 … 7

    def four_deleted() -> None:  # once the first page was served: more than the overlap of 2
        for user in first_page[:4]:
            clerk.users.remove(user)

    clerk.after[("/v1/users", 0)] = four_deleted

    with serve(clerk):
        first, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                              "--page-size", "5")  # fmt: skip
        held_back = state(db)["incremental_since_ms"]
        second, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                               "--page-size", "5")  # fmt: skip

    stored = documents(db, PATHS.users)
    assert (first, second) == (0, 0)
    assert held_back <= users[6]["updated_at"]  # the user the shifted pages skipped is read again
    assert all(stored[user["id"]]["first_name"] == "Changed" for user in users)


@pytest.mark.usefixtures("secret_key")
def test_a_resumed_full_run_starts_the_next_incremental_from_its_users_listing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(8))
    with serve(clerk):
        run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--budget", "0")
        an_hour_ago = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
        # The cut-off invocation began its users listing an hour before the one that resumes it:
        db.document(STATE).update({"full.listing_began_ms": an_hour_ago})
        code, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5")

    margin = lease.INCREMENTAL_MARGIN // timedelta(milliseconds=1)
    assert code == 0
    assert state(db)["incremental_since_ms"] == an_hour_ago - margin

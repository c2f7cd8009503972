"""Reconcile at scale, scaled down: users paged by cursor while Clerk changes, the ids a run keeps in
little memory, the write ramp on a clock the test advances, and a budget that holds whatever Clerk
answers. The million-user run is `make soak` (test_reconcile_soak.py)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from clerk_api import SECRET_KEY, FakeClerk, serve
from conftest import PATHS, PROJECT
from google.cloud import firestore
from reconcile_runs import STATE, clerk_users, counts, deliver, documents, run_cli, summary_of

from clerk_sync import config
from clerk_sync.reconcile import ClerkApi, Mode, Report, run
from clerk_sync.reconcile.ramp import WRITES_PER_REPAIR, Ramp
from clerk_sync.reconcile.ramp import ceiling as ramp_ceiling

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def stale_copies(db: firestore.Client, users: list[dict[str, Any]]) -> None:
    """Firestore holds an older version of each (first name `Stale`): only a listing brings them up to date."""
    for user in users:
        deliver(db, f"msg_old_{user['id']}", "user.updated",
                {**user, "first_name": "Stale", "updated_at": user["updated_at"] - 100})  # fmt: skip


def fetched_by_id(clerk: FakeClerk) -> set[str]:
    """The users asked for one by one (`GET /v1/users/{id}`): what the listing did not show."""
    return {request.path.rsplit("/", 1)[1] for request in clerk.requests if request.path.startswith("/v1/users/user")}


# --- users by cursor ---------------------------------------------------------------------------


@pytest.mark.usefixtures("secret_key")
def test_cursor_paging_skips_nobody_while_users_are_created_and_deleted_during_the_listing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(30)
    stale_copies(db, users)
    clerk = FakeClerk(list(users))
    # users[4], the first page's last, is the next page's cursor: deleted right after it was listed.
    gone = [users[7], users[20]]  # deleted before the listing reached them
    newcomers = clerk_users(2, start=30)

    def first_page_served() -> None:
        clerk.users.remove(users[4])
        clerk.users.remove(users[7])
        clerk.users.extend(newcomers)

    clerk.after[("/v1/users", 0)] = first_page_served
    clerk.after[("/v1/users", 3)] = lambda: clerk.users.remove(users[20])
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")

    summary = summary_of(out)
    stored = documents(db, PATHS.users)
    listed = [user for user in users if user not in gone]
    assert code == 0, out + err
    assert all(stored[user["id"]]["first_name"] == "Grace" for user in listed)  # none skipped
    assert all(user["id"] in stored for user in newcomers)
    assert fetched_by_id(clerk) == {user["id"] for user in gone}  # only the unlisted were asked for by id …
    assert all(user["id"] not in stored for user in gone)  # … and deleted once Clerk answered 404
    assert counts(summary, "users") == {
        "in_sync": 0, "missing": 2, "outdated": 28, "extra": 2, "conflicts": 0, "skipped": 0,
    }  # fmt: skip
    refused = [request for request in clerk.list_requests() if request.status == 422]
    assert [request.query["starting_after"] for request in refused] == [users[4]["id"]]
    assert "Clerk refused the cursor user_rc0004 (422" in err
    assert all("offset" not in request.query for request in clerk.list_requests())


@pytest.mark.usefixtures("secret_key")
def test_when_every_kept_cursor_is_deleted_the_listing_starts_over_and_skips_nobody(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    stale_copies(db, users)
    clerk = FakeClerk(list(users))
    first_page = users[:5]  # every cursor the listing keeps after it

    def first_page_deleted() -> None:
        for user in first_page:
            clerk.users.remove(user)

    clerk.after[("/v1/users", 0)] = first_page_deleted
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")
        after_first = documents(db, PATHS.users)
        asked_first = fetched_by_id(clerk)
        next_code, next_out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    assert code == 0, out + err
    assert "listing again from the first user" in err
    assert all(after_first[user["id"]]["first_name"] == "Grace" for user in users)  # nobody skipped
    assert counts(summary_of(out), "users")["outdated"] == 12  # each counted once, though listed again
    # Listed before Clerk deleted them, so not extra in this run; the next run confirms each by id (404):
    assert (asked_first, counts(summary_of(out), "users")["extra"]) == (set(), 0)
    assert (next_code, counts(summary_of(next_out), "users")["extra"]) == (0, 5)
    assert fetched_by_id(clerk) == {user["id"] for user in first_page}
    assert sorted(documents(db, PATHS.users)) == [user["id"] for user in users[5:]]


# --- the write ramp --------------------------------------------------------------------------------


class Clock:
    """A clock only the ramp's waits move (plus `tick` per call, as if each call took that long)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick, self.slept = 1000.0, tick, 0.0

    def time(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        self.slept += seconds


def granted_per_second(grants: list[tuple[float, int]], started: float) -> dict[int, int]:
    per_second: dict[int, int] = {}
    for at, writes in grants:
        second = math.floor(at - started)
        per_second[second] = per_second.get(second, 0) + writes
    return per_second


def test_the_write_ramp_never_exceeds_firestores_schedule_and_keeps_up_with_it() -> None:
    clock = Clock(tick=0.0001)
    raised: list[int] = []
    ramp = Ramp(clock=clock.time, sleep=clock.sleep, on_raise=raised.append)
    grants: list[tuple[float, int]] = []
    started = clock.now + clock.tick
    while clock.now - started < 1199.5:  # 20 minutes of repairs as fast as they come
        grants.append((ramp.take(), WRITES_PER_REPAIR))

    per_second = granted_per_second(grants, started)
    assert all(writes <= ramp_ceiling(second) for second, writes in per_second.items())
    assert [ramp_ceiling(second) for second in (0, 299, 300, 599, 600, 900, 1199)] == [500, 500, 750, 750, 1125, 1687,
                                                                                        1687]  # fmt: skip
    assert all(writes >= ramp_ceiling(second) - WRITES_PER_REPAIR for second, writes in per_second.items()
               if second < 1199)  # fmt: skip
    # Each raise said once, for the progress output (the last take waited into the 21st minute):
    assert raised == [500, 750, 1125, 1687, 2531]
    assert clock.slept > 1100  # it waited, rather than writing as fast as the repairs came


def test_the_write_ramp_holds_its_schedule_across_threads() -> None:
    clock = Clock()
    ramp = Ramp(clock=clock.time, sleep=clock.sleep)
    grants: list[tuple[float, int]] = []
    lock = threading.Lock()

    def repairs() -> None:
        for _ in range(1000):
            granted_at = ramp.take()
            with lock:
                grants.append((granted_at, WRITES_PER_REPAIR))

    threads = [threading.Thread(target=repairs) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    per_second = granted_per_second(grants, 1000.0)
    assert sum(per_second.values()) == 8 * 1000 * WRITES_PER_REPAIR
    assert max(per_second.values()) <= 500
    assert len(per_second) == 64  # 32,000 writes at 500 a second


@pytest.mark.usefixtures("secret_key")
def test_every_repair_waits_for_the_ramp_and_the_progress_output_says_its_ceiling(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(9))
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "backfill", "--page-size", "5", "--json")

    assert code == 0, out + err
    assert "writes: at most 500/s now (Firestore's ramp for new traffic: 500/s, +50 % every 5 minutes)" in err
    assert "9/9 users 100%" in err
    assert ", writes at most 500/s" in err
    assert summary_of(out)["write_ceiling"] == 500


@pytest.mark.usefixtures("secret_key")
def test_a_dry_run_writes_nothing_so_it_never_waits_for_the_ramp(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(3))
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "backfill", "--dry-run", "--json")

    assert code == 3
    assert "writes: at most" not in err
    assert summary_of(out)["write_ceiling"] is None


# --- the budget holds whatever Clerk answers --------------------------------------------------------


@pytest.mark.usefixtures("secret_key")
def test_a_retry_after_longer_than_the_budget_stops_the_run_at_once_checkpointed_and_says_when_it_resumes(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    clerk = FakeClerk(users, path_faults={("/v1/users", 1): (429, {"Retry-After": "300"})})
    with serve(clerk):
        started = time.monotonic()
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5",
                                 "--budget", "60", "--json")  # fmt: skip
        elapsed = time.monotonic() - started
        checkpoint = (db.document(STATE).get(timeout=10).to_dict() or {}).get("full", {})
        next_code, next_out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5",
                                         "--json")  # fmt: skip

    summary, resumed = summary_of(out), summary_of(next_out)
    assert (code, summary["outcome"], summary["checkpointed"]) == (1, "partial", True), out + err
    assert elapsed < 30  # not the 300 s Clerk asked for, nor the 60 s budget
    assert "retrying in" not in err  # it never began a wait it could not finish
    assert summary["resume"].startswith("the next full run resumes from the checkpoint; Clerk asked to wait until ")
    assert "429, and waiting 300 s would pass the run's budget" in summary["resume"]
    # users are phase 2 (after permissions and roles)
    assert (checkpoint["phase"], checkpoint["offset"], checkpoint["cursors"][-1]) == (2, 5, "user_rc0004")
    assert (next_code, resumed["outcome"], resumed["resumed"]) == (0, "repaired", True)
    assert counts(resumed, "users")["missing"] == 12
    # The refused request, then the next run going on after the same user (its deletion phase lists again):
    assert [request.query.get("starting_after") for request in clerk.list_requests()][1:4] == [
        "user_rc0004", "user_rc0004", "user_rc0009"]  # fmt: skip


@pytest.mark.usefixtures("secret_key")
def test_the_text_summary_of_a_run_clerk_held_past_its_budget_says_when_it_resumes(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(3), path_faults={("/v1/instance", 0): (429, {"Retry-After": "120"})})
    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--budget", "30")

    assert code == 1
    assert "reconcile full: stopped at its time budget; the next full run starts again; Clerk asked to wait" in out
    assert documents(db, PATHS.users) == {}


def test_the_next_scheduled_run_goes_on_with_a_full_run_an_earlier_invocation_left_cut_off(
    db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    users = clerk_users(12)
    clerk = FakeClerk(users)

    def scheduled(mode: Mode, budget: float) -> Report:
        api = ClerkApi(SECRET_KEY, clerk.url)
        try:
            return run(db, config.read_settings(), api, mode=mode, page_size=5, budget_seconds=budget,
                       continue_full=True)  # fmt: skip
        finally:
            api.close()

    with serve(clerk):
        cut_off = scheduled(Mode.FULL, 0)  # the daily full run: one page, then its budget is spent
        hourly = scheduled(Mode.INCREMENTAL, 1500)  # the next scheduled run, an incremental one

    assert (cut_off.outcome, cut_off.resume) == ("partial", "the next scheduled run resumes from the checkpoint")
    assert (hourly.mode, hourly.resumed, hourly.outcome) == (Mode.FULL, True, "repaired")
    assert hourly.tallies["users"].missing == 12
    assert sorted(documents(db, PATHS.users)) == [user["id"] for user in users]
    assert all(request.query.get("order_by") == "+created_at" for request in clerk.list_requests())

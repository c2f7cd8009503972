"""A run from start to end: the guards, the lease, each kind listed and repaired, the deletions, the result."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync.config import Settings
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.reconcile import billing_phase, guards, kinds, lease, listing, repairs, undo
from clerk_sync.reconcile.clerk_api import PAGE_SIZE, ClerkApi, ClerkUnavailable, OutOfTime
from clerk_sync.reconcile.context import READ_TIMEOUT_SECONDS, Run
from clerk_sync.reconcile.ramp import Ramp
from clerk_sync.reconcile.report import TALLIED, Mode, Progress, ReconcileStopped, Report, Silent, Tally

__all__ = ["LISTINGS", "REMOVALS", "run"]

# Phases 0 to 4: each kind listed, compared and repaired. Permissions and roles first: a role derives
# what it grants from the permissions' documents, and a member names its role's id once the role is stored.
LISTINGS = ("permissions", "roles", "users", "organizations", "memberships")
# Phases 5 to 7: deletions. Users and organizations are counted together before either is deleted;
# memberships after them, since deleting a user or an organization removes its memberships; roles and
# permissions last (a permission's deletion leaves every role holding it).
REMOVALS = (("users", "organizations"), ("memberships",), ("roles", "permissions"))
BILLING_PHASE = len(LISTINGS) + len(REMOVALS)  # then Clerk Billing: plans, every payer's subscription


def run(
    db: firestore.Client,
    settings: Settings,
    api: ClerkApi,
    *,
    mode: Mode = Mode.FULL,
    deletions: bool = True,
    dry_run: bool = False,
    workers: int = 8,
    page_size: int = PAGE_SIZE,
    budget_seconds: float | None = None,
    restart: bool = False,
    allow_mass_deletion: bool = False,
    pin_instance: bool = False,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    undo_run: str | None = None,
    progress: Progress | None = None,
    ramp: Ramp | None = None,
    continue_full: bool = False,
) -> Report:
    """One reconcile run (or the rest of a cut-off one); never raises for Clerk or Firestore trouble.

    ReconcileBusy is the one exception: another run holds the lease. `undo_run` (a run id, or
    `all`) first removes that run's tombstones of objects Clerk still holds, then runs a full run
    without deletions, which writes them back. Repairs follow `ramp` (by default Firestore's schedule
    for new traffic, from this invocation's first write). With `continue_full`, an incremental run
    first finishes a full run an earlier invocation left cut off (the scheduled function: a million
    users take several invocations, and the next scheduled run, hourly, goes on where one stopped).

    No wait for Clerk runs past the budget: a 429 whose `Retry-After` would outlast it ends the run
    there, partial and checkpointed, and `report.resume` says when it goes on.
    """
    started = time.monotonic()
    began_ms = kinds.now_ms()
    waited_for: OutOfTime | None = None
    if undo_run is not None:
        mode, deletions, restart = Mode.FULL, False, True
    report = Report(mode=mode, dry_run=dry_run, deletions=deletions and mode is Mode.FULL, undo_of=undo_run)
    progress = progress or Silent()
    state_ref = db.collection(settings.paths.state).document(lease.STATE_DOCUMENT)
    budget_deadline = started + budget_seconds if budget_seconds is not None else None
    api.deadline = budget_deadline
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        state_run = Run(db, settings, api, report, progress, pool, "", budget_deadline, state_ref, page_size)
        state_run.allow_mass_deletion, state_run.read_timeout = allow_mass_deletion, read_timeout
        if not dry_run:
            state_run.ramp = ramp or Ramp(on_raise=lambda writes: _raised(report, progress, writes))
        try:
            report.partial = not _steps(
                state_run, pin_instance=pin_instance, continue_full=continue_full, restart=restart,
                undo_run=undo_run, began_ms=began_ms,
            )  # fmt: skip
        except OutOfTime as late:
            report.partial, waited_for = True, late
        except (ReconcileStopped, ClerkUnavailable, StoreUnavailable) as stopped:
            report.stopped = str(stopped)
            report.stop_reason = stopped.reason if isinstance(stopped, ReconcileStopped) else "clerk_unavailable"
            if isinstance(stopped, StoreUnavailable):
                report.stopped, report.stop_reason = f"Firestore failed: {stopped}", "firestore_unavailable"
        except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
            report.stopped, report.stop_reason = f"Firestore failed: {type(error).__name__}", "firestore_unavailable"
        except KeyboardInterrupt:
            report.stopped, report.stop_reason = "interrupted", "interrupted"
        finally:
            if state_run.lease_token is not None and report.stop_reason != "lease_lost":
                lease.release(state_run)
    report.run_id = state_run.run_id or None
    report.clerk_requests = api.requests
    report.elapsed_seconds = time.monotonic() - started
    if report.partial or (report.stopped and report.checkpointed):
        report.resume = _resume(report, waited_for, continue_full)
    return report


def _steps(
    state_run: Run, *, pin_instance: bool, continue_full: bool, restart: bool, undo_run: str | None, began_ms: int
) -> bool:
    """The guards, the lease, the phases and the result; False when the budget ran out (checkpoint saved)."""
    db, settings, report = state_run.db, state_run.settings, state_run.report
    key_instance, to_record = guards.check_instance(
        db, settings, state_run.api, state_run.progress, pin_instance=pin_instance, timeout=state_run.read_timeout
    )
    report.instance = key_instance.describe()
    if continue_full and report.mode is Mode.INCREMENTAL and not report.dry_run:
        _continue_full(state_run)
    state, start_phase, start = _begin(state_run, restart)
    if to_record and not report.dry_run:
        guards.record_instance(db, settings, key_instance, timeout=state_run.read_timeout)
    if undo_run is not None:
        undo.undo_deletions(state_run, undo_run)
    finished = _phases(state_run, state, start_phase, start)
    if finished and not report.dry_run:
        lease.finish(state_run, state, began_ms)
        state_run.lease_token = None  # finishing released it
    return finished


def _continue_full(state_run: Run) -> None:
    """Make this run the rest of a cut-off full run, if an earlier invocation left one."""
    saved = lease.read_state(state_run.db, state_run.state_ref, state_run.read_timeout).get(str(Mode.FULL))
    if isinstance(saved, dict) and isinstance(saved.get("run_id"), str):
        state_run.report.mode, state_run.report.deletions = Mode.FULL, True
        state_run.progress.note(f"full run {saved['run_id']} was cut off: this run goes on with it")


def _resume(report: Report, waited_for: OutOfTime | None, continue_full: bool) -> str:
    """When a run that stopped early goes on, and why it stopped where it did."""
    if not report.checkpointed:
        when = f"the next {report.mode} run starts again"
    elif continue_full:
        when = "the next scheduled run resumes from the checkpoint"
    else:
        when = f"the next {report.mode} run resumes from the checkpoint"
    if waited_for is None:
        return when
    not_before = datetime.now(UTC) + timedelta(seconds=waited_for.wait_seconds)
    return f"{when}; Clerk asked to wait until {not_before:%Y-%m-%dT%H:%M:%SZ}, past this run's budget ({waited_for})"


def _ceiling(run_state: Run) -> int | None:
    return run_state.ramp.current() if run_state.ramp is not None else None


def _raised(report: Report, progress: Progress, writes: int) -> None:
    """The ramp's ceiling rose (or was first reached): said in the progress output and kept in the report."""
    report.write_ceiling = writes
    progress.note(f"writes: at most {writes}/s now (Firestore's ramp for new traffic: 500/s, +50 % every 5 minutes)")


def _begin(state_run: Run, restart: bool) -> tuple[dict[str, Any], int, listing.Position]:
    """The lease taken (not for a dry run), and where the run starts: the state, the phase and the position in it."""
    report, settings = state_run.report, state_run.settings
    if report.dry_run:
        state_run.run_id = uuid.uuid4().hex[:12]
        return lease.read_state(state_run.db, state_run.state_ref, state_run.read_timeout), 0, listing.Position()
    deadline = time.monotonic() + settings.firestore_deadline_seconds
    state, state_run.run_id, state_run.lease_token = lease.take(
        state_run.db, state_run.state_ref, report.mode, restart=restart, deadline=deadline
    )
    saved = state.get(str(report.mode))
    if not isinstance(saved, dict) or saved.get("run_id") != state_run.run_id:
        return state, 0, listing.Position()
    tallies = saved.get("tallies") or {}
    report.tallies = {kind: Tally.from_dict(tallies.get(kind) or {}) for kind in TALLIED}
    report.resumed = report.checkpointed = True
    began = saved.get("listing_began_ms")
    state_run.listing_began_ms = int(began) if isinstance(began, int) else None
    phase, cursors = int(saved.get("phase", 0)), saved.get("cursors")
    cursors = tuple(str(cursor) for cursor in cursors) if isinstance(cursors, list) else ()
    if LISTINGS[phase : phase + 1] == ("users",) and not cursors:
        return state, phase, listing.Position()  # a checkpoint of an offset listing: users start over
    return state, phase, listing.Position(int(saved.get("offset", 0)), cursors)


def _phases(run_state: Run, state: dict[str, Any], start_phase: int, start: listing.Position) -> bool:
    """Every phase from where the run (re)starts; False when the budget ran out (checkpoint saved)."""
    report = run_state.report
    if report.mode is Mode.INCREMENTAL:
        return _incremental(run_state, state)
    for phase, kind in enumerate(LISTINGS):
        if phase < start_phase:
            continue
        position = start if phase == start_phase else listing.Position()
        resumed = position.done > 0
        if phase == 0 and not resumed:
            run_state.listing_began_ms = kinds.now_ms()
        if resumed:
            run_state.seen.pop(kind, None)  # a partial listing cannot tell what is extra
        total = run_state.api.total(kind)
        for after, page in listing.kind_pages(run_state, kind, position):
            repairs.compare_and_repair(run_state, kind, page)
            run_state.progress.advance(kind, after.done, total, _ceiling(run_state))
            lease.checkpoint(run_state, phase, after.done, after.cursors)
            if run_state.out_of_time():
                return False
        repairs.settle_conflicts(run_state, kind)
        if resumed and kind in run_state.seen:
            run_state.seen.pop(kind)
        lease.checkpoint(run_state, phase + 1, 0)
    if not (_removals(run_state, start_phase) and _billing(run_state, start_phase)):
        return False
    if report.tallies["users"].conflicts:
        # A deletion found above may have freed an address a conflicting user waits for.
        repairs.retry_conflicts(run_state, list(report.tallies["users"].conflicts))
    return True


def _removals(run_state: Run, start_phase: int) -> bool:
    """The deletion phases (full runs with deletions); False when the budget ran out."""
    for phase, removed in enumerate(REMOVALS, start=len(LISTINGS)):
        if phase < start_phase or not run_state.report.deletions:
            continue
        run_state.progress.note(f"{' and '.join(removed)}: looking for objects Clerk no longer has")
        if not repairs.remove_extras(run_state, removed):
            return False  # the checkpoint still names this phase: the next run looks again
        lease.checkpoint(run_state, phase + 1, 0)
    return True


def _billing(run_state: Run, start_phase: int) -> bool:
    """Clerk Billing's phase, unless a resumed run is past it; False when the budget ran out."""
    if start_phase > BILLING_PHASE:
        return True
    run_state.progress.note("billing: plans, and every payer's subscription")
    if not billing_phase.reconcile_billing(run_state):
        return False
    lease.checkpoint(run_state, BILLING_PHASE + 1, 0)
    return True


def _incremental(run_state: Run, state: dict[str, Any]) -> bool:
    """Users changed since the last run, newest first, until the listing reaches older ones."""
    since = state.get("incremental_since_ms")
    since_ms = int(since) if isinstance(since, int) else None
    looked_at = 0
    for page in listing.changed_users(run_state, since_ms):
        repairs.compare_and_repair(run_state, "users", page)
        looked_at += len(page)
        run_state.progress.advance("users", looked_at, None, _ceiling(run_state))
        lease.checkpoint(run_state, 0, 0)  # renews the lease
        if run_state.out_of_time():
            return False
    earlier = state.get(lease.CONFLICTS_FIELD)
    repairs.retry_conflicts(run_state, [str(user_id) for user_id in earlier] if isinstance(earlier, list) else [])
    return True

"""A run from start to end: the guards, the lease, each kind listed and repaired, the deletions, the result."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync.config import Settings
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.reconcile import billing_phase, guards, kinds, lease, listing, repairs, undo
from clerk_sync.reconcile.clerk_api import PAGE_SIZE, ClerkApi, ClerkUnavailable
from clerk_sync.reconcile.context import READ_TIMEOUT_SECONDS, Run
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
) -> Report:
    """One reconcile run (or the rest of a cut-off one); never raises for Clerk or Firestore trouble.

    ReconcileBusy is the one exception: another run holds the lease. `undo_run` (a run id, or
    `all`) first removes that run's tombstones of objects Clerk still holds, then runs a full run
    without deletions, which writes them back.
    """
    started = time.monotonic()
    began_ms = kinds.now_ms()
    if undo_run is not None:
        mode, deletions, restart = Mode.FULL, False, True
    report = Report(mode=mode, dry_run=dry_run, deletions=deletions and mode is Mode.FULL, undo_of=undo_run)
    progress = progress or Silent()
    state_ref = db.collection(settings.paths.state).document(lease.STATE_DOCUMENT)
    budget_deadline = started + budget_seconds if budget_seconds is not None else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        state_run = Run(db, settings, api, report, progress, pool, "", budget_deadline, state_ref, page_size)
        state_run.allow_mass_deletion, state_run.read_timeout = allow_mass_deletion, read_timeout
        try:
            key_instance, to_record = guards.check_instance(
                db, settings, api, progress, pin_instance=pin_instance, timeout=read_timeout
            )
            report.instance = key_instance.describe()
            state, start_phase, start_offset = _begin(state_run, restart)
            if to_record and not dry_run:
                guards.record_instance(db, settings, key_instance, timeout=read_timeout)
            if undo_run is not None:
                undo.undo_deletions(state_run, undo_run)
            finished = _phases(state_run, state, start_phase, start_offset)
            if finished and not dry_run:
                lease.finish(state_run, state, began_ms)
                state_run.lease_token = None  # finishing released it
            report.partial = not finished
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
    return report


def _begin(state_run: Run, restart: bool) -> tuple[dict[str, Any], int, int]:
    """The lease taken (not for a dry run), and where the run starts: the state, the phase and the offset."""
    report, settings = state_run.report, state_run.settings
    if report.dry_run:
        state_run.run_id = uuid.uuid4().hex[:12]
        return lease.read_state(state_run.db, state_run.state_ref, state_run.read_timeout), 0, 0
    deadline = time.monotonic() + settings.firestore_deadline_seconds
    state, state_run.run_id, state_run.lease_token = lease.take(
        state_run.db, state_run.state_ref, report.mode, restart=restart, deadline=deadline
    )
    saved = state.get(str(report.mode))
    if not isinstance(saved, dict) or saved.get("run_id") != state_run.run_id:
        return state, 0, 0
    tallies = saved.get("tallies") or {}
    report.tallies = {kind: Tally.from_dict(tallies.get(kind) or {}) for kind in TALLIED}
    report.resumed = report.checkpointed = True
    began = saved.get("listing_began_ms")
    state_run.listing_began_ms = int(began) if isinstance(began, int) else None
    return state, int(saved.get("phase", 0)), int(saved.get("offset", 0))


def _phases(run_state: Run, state: dict[str, Any], start_phase: int, start_offset: int) -> bool:
    """Every phase from where the run (re)starts; False when the budget ran out (checkpoint saved)."""
    report = run_state.report
    if report.mode is Mode.INCREMENTAL:
        return _incremental(run_state, state)
    for phase, kind in enumerate(LISTINGS):
        if phase < start_phase:
            continue
        offset = start_offset if phase == start_phase else 0
        if phase == 0 and offset == 0:
            run_state.listing_began_ms = kinds.now_ms()
        if offset:
            run_state.seen.pop(kind, None)  # a partial listing cannot tell what is extra
        total = run_state.api.total(kind)
        for page_offset, page in listing.pages(run_state, kind, offset, "+created_at"):
            repairs.compare_and_repair(run_state, kind, page)
            done = page_offset + len(page)
            run_state.progress.advance(kind, done, total)
            lease.checkpoint(run_state, phase, done)
            if run_state.out_of_time():
                return False
        repairs.settle_conflicts(run_state, kind)
        if offset and kind in run_state.seen:
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
        run_state.progress.advance("users", looked_at, None)
        lease.checkpoint(run_state, 0, 0)  # renews the lease
        if run_state.out_of_time():
            return False
    earlier = state.get(lease.CONFLICTS_FIELD)
    repairs.retry_conflicts(run_state, [str(user_id) for user_id in earlier] if isinstance(earlier, list) else [])
    return True

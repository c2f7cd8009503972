"""A run from start to end: the lease, each kind listed and repaired, then the deletions, then the result."""

from __future__ import annotations

import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync.config import Settings
from clerk_sync.reconcile import lease, listing, repairs
from clerk_sync.reconcile.clerk_api import PAGE_SIZE, ClerkApi, ClerkUnavailable
from clerk_sync.reconcile.context import Run
from clerk_sync.reconcile.kinds import KINDS
from clerk_sync.reconcile.report import Mode, Progress, ReconcileStopped, Report, Silent, Tally

__all__ = ["PHASES", "run"]

PHASES = (("users", False), ("organizations", False), ("memberships", False), ("users", True),
          ("organizations", True), ("memberships", True))  # fmt: skip


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
    progress: Progress | None = None,
) -> Report:
    """One reconcile run (or the rest of a cut-off one); never raises for Clerk or Firestore trouble.

    ReconcileBusy is the one exception: another run holds the lease.
    """
    started = time.monotonic()
    report = Report(mode=mode, dry_run=dry_run, deletions=deletions and mode is Mode.FULL)
    progress = progress or Silent()
    state_ref = db.collection(settings.paths.state).document(lease.STATE_DOCUMENT)
    state: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:12]
    start_phase, start_offset = 0, 0
    if not dry_run:
        lease_deadline = time.monotonic() + settings.firestore_deadline_seconds
        state, run_id = lease.take(db, state_ref, mode, restart=restart, deadline=lease_deadline)
        saved = state.get(str(mode))
        if isinstance(saved, dict) and saved.get("run_id") == run_id:
            start_phase, start_offset = int(saved.get("phase", 0)), int(saved.get("offset", 0))
            tallies = saved.get("tallies") or {}
            report.tallies = {kind: Tally.from_dict(tallies.get(kind) or {}) for kind in KINDS}
            report.resumed = True
    budget_deadline = started + budget_seconds if budget_seconds is not None else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        state_run = Run(db, settings, api, report, progress, pool, run_id, budget_deadline, state_ref, page_size)
        try:
            finished = _phases(state_run, mode, state, start_phase, start_offset)
            if finished and not dry_run:
                lease.finish(state_run, state, mode, started)
            report.partial = not finished
        except (ReconcileStopped, ClerkUnavailable) as stopped:
            report.stopped = str(stopped)
        except KeyboardInterrupt:
            report.stopped = "interrupted"
        finally:
            if not dry_run:
                with contextlib.suppress(api_exceptions.GoogleAPICallError, api_exceptions.RetryError):
                    lease.release(db, state_ref)
    report.clerk_requests = api.requests
    report.elapsed_seconds = time.monotonic() - started
    return report


def _phases(run_state: Run, mode: Mode, state: dict[str, Any], start_phase: int, start_offset: int) -> bool:
    """Every phase from where the run (re)starts; False when the budget ran out (checkpoint saved)."""
    report = run_state.report
    if mode is Mode.INCREMENTAL:
        return _incremental(run_state, state)
    for phase, (kind, removal) in enumerate(PHASES):
        if phase < start_phase or (removal and not report.deletions):
            continue
        if removal:
            run_state.progress.note(f"{kind}: looking for objects Clerk no longer has")
            repairs.find_extras(run_state, kind)
            lease.checkpoint(run_state, phase + 1, 0)
            continue
        offset = start_offset if phase == start_phase else 0
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
    return True


def _incremental(run_state: Run, state: dict[str, Any]) -> bool:
    """Users changed since the last run, newest first, until the listing reaches older ones."""
    since = state.get("incremental_since_ms")
    since_ms = int(since) if isinstance(since, int) else None
    looked_at = 0
    for _, page in listing.pages(run_state, "users", 0, "-updated_at"):
        fresh = [data for data in page if since_ms is None or int(data.get("updated_at") or 0) >= since_ms]
        repairs.compare_and_repair(run_state, "users", fresh)
        looked_at += len(fresh)
        run_state.progress.advance("users", looked_at, None)
        if len(fresh) < len(page) or run_state.out_of_time():
            break
    repairs.settle_conflicts(run_state, "users")
    return not run_state.out_of_time()

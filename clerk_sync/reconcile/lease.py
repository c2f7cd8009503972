"""The lease and the checkpoint: one run at a time, and a cut-off run resumed where it stopped.

Both live in one state document (`sync_state/reconcile`). Every write to it after the lease is
taken (checkpoint, renewal, result, release) is a transaction that first checks this invocation
still holds the lease: a run that outlived its lease while another took it stops (LeaseLost)
instead of overwriting the other's checkpoint or releasing its lease.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import transaction
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.reconcile.context import Run
from clerk_sync.reconcile.report import LeaseLost, Mode, ReconcileBusy, ReconcileStopped

__all__ = [
    "CONFLICTS_FIELD",
    "INCREMENTAL_MARGIN",
    "LEASE_SECONDS",
    "STATE_DOCUMENT",
    "checkpoint",
    "finish",
    "release",
    "take",
]

LEASE_SECONDS = 300.0
STATE_DOCUMENT = "reconcile"
# Clerk's clock and ours may differ; an incremental run looks this far before the last one began.
INCREMENTAL_MARGIN = timedelta(minutes=10)
LEASE_FIELDS = ("lease_until", "lease_owner")
# The users still in conflict when a run finished: the next run (incremental too) retries them.
CONFLICTS_FIELD = "pending_conflicts"
MAX_KEPT_CONFLICTS = 1000  # ids only, well inside a document's 1 MiB


def take(
    db: firestore.Client, state_ref: firestore.DocumentReference, mode: Mode, *, restart: bool, deadline: float
) -> tuple[dict[str, Any], str, str]:
    """The state document, this run's id (a cut-off run's, to resume it) and the lease token, with the lease taken.

    In a transaction, so two runs starting together cannot both hold it; ReconcileBusy otherwise.
    """
    token = uuid.uuid4().hex

    def body(attempt: transaction.Attempt) -> tuple[dict[str, Any], str]:
        snapshot = attempt.read([state_ref])[state_ref.path]
        state: dict[str, Any] = (snapshot.to_dict() if snapshot.exists else None) or {}
        lease_until = state.get("lease_until")
        if isinstance(lease_until, datetime) and lease_until > datetime.now(UTC):
            raise ReconcileBusy(f"another reconcile run holds the lease until {lease_until.isoformat()}")
        saved = state.get(str(mode))
        resumable = isinstance(saved, dict) and isinstance(saved.get("run_id"), str) and not restart
        run_id = str(saved["run_id"]) if resumable and isinstance(saved, dict) else uuid.uuid4().hex[:12]
        attempt.set(state_ref, {"lease_until": _lease_end(), "lease_owner": token}, merge=LEASE_FIELDS)
        return state, run_id

    try:
        state, run_id = transaction.run(db, deadline, body)
    except StoreUnavailable as error:
        raise ReconcileStopped(f"Firestore failed taking the lease: {error}") from None
    return state, run_id, token


def _lease_end() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)


def _write_if_held(run: Run, what: str, update: dict[str, Any]) -> None:
    """Write `update` (whole fields) to the state document, in a transaction, if this invocation holds the lease."""
    token = run.lease_token

    def body(attempt: transaction.Attempt) -> None:
        snapshot = attempt.read([run.state_ref])[run.state_ref.path]
        owner = (snapshot.to_dict() or {}).get("lease_owner") if snapshot.exists else None
        if owner != token:
            raise LeaseLost(
                f"another reconcile run took the lease ({'expired' if owner is None else 'renewed by another'}) "
                f"while this one was {what}; this one stopped writing"
            )
        attempt.set(run.state_ref, update, merge=list(update))

    run.with_store_retries(
        what, lambda: transaction.run(run.db, time.monotonic() + run.settings.firestore_deadline_seconds, body)
    )


def checkpoint(run: Run, phase: int, offset: int, cursors: tuple[str, ...] = ()) -> None:
    """Renew the lease; in a full run also save where a cut-off run resumes (`cursors`: a users listing's)."""
    if run.report.dry_run:
        return
    update: dict[str, Any] = {"lease_until": _lease_end(), "lease_owner": run.lease_token}
    if run.report.mode is Mode.FULL:
        update[str(run.report.mode)] = {
            "run_id": run.run_id,
            "phase": phase,
            "offset": offset,
            "cursors": list(cursors),
            "tallies": {kind: tally.as_dict() for kind, tally in run.report.tallies.items()},
            "listing_began_ms": run.listing_began_ms,
            "saved_at": datetime.now(UTC),  # nested: the transaction writes no sentinel there
        }
    _write_if_held(run, "saving the checkpoint", update)
    run.report.checkpointed = run.report.mode is Mode.FULL


def release(run: Run) -> None:
    """Let the next run start at once, if this one still holds the lease (a killed run's lease expires)."""
    with contextlib.suppress(ReconcileStopped):  # lost or unreachable: the lease expires by itself
        _write_if_held(run, "releasing the lease", dict.fromkeys(LEASE_FIELDS, firestore.DELETE_FIELD))


def finish(run: Run, state: dict[str, Any], began_ms: int) -> None:
    """A completed run: its progress cleared, the next incremental's starting point, the lease released.

    An incremental run starts where the last one's listing began (less a margin for clocks), or
    earlier when its listing could not prove it skipped nothing; never later than before.
    """
    report, mode = run.report, run.report.mode
    margin = INCREMENTAL_MARGIN // timedelta(milliseconds=1)
    summary = {"outcome": report.outcome, "drift": report.drift, "finished_at": datetime.now(UTC)}
    update: dict[str, Any] = {
        str(mode): firestore.DELETE_FIELD,
        f"last_{mode}": summary,
        CONFLICTS_FIELD: sorted(report.tallies["users"].conflicts)[:MAX_KEPT_CONFLICTS],
        **dict.fromkeys(LEASE_FIELDS, firestore.DELETE_FIELD),
    }
    listing_began = run.listing_began_ms if mode is Mode.FULL else began_ms
    if listing_began is not None:
        since = listing_began - margin
        if run.held_back_ms is not None:
            since = min(since, run.held_back_ms)
        previous = state.get("incremental_since_ms")
        if mode is Mode.INCREMENTAL and isinstance(previous, int):
            since = max(since, previous)
        update["incremental_since_ms"] = since
    _write_if_held(run, "saving the result", update)
    report.checkpointed = False


def read_state(db: firestore.Client, state_ref: firestore.DocumentReference, timeout: float) -> dict[str, Any]:
    """The state document as it is (for a dry run, which takes no lease)."""
    try:
        snapshot = state_ref.get(retry=None, timeout=timeout)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise ReconcileStopped(f"Firestore failed reading the reconcile state: {type(error).__name__}") from None
    return (snapshot.to_dict() if snapshot.exists else None) or {}

"""The lease and the checkpoint: one run at a time, and a cut-off run resumed where it stopped.

Both live in one state document (`sync_state/reconcile`).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from clerk_sync import transaction
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.reconcile import kinds
from clerk_sync.reconcile.context import READ_TIMEOUT_SECONDS, Run
from clerk_sync.reconcile.report import Mode, ReconcileBusy, ReconcileStopped

__all__ = ["INCREMENTAL_MARGIN", "LEASE_SECONDS", "STATE_DOCUMENT", "checkpoint", "finish", "release", "take"]

LEASE_SECONDS = 300.0
STATE_DOCUMENT = "reconcile"
# Clerk's clock and ours may differ; an incremental run looks this far before the last one began.
INCREMENTAL_MARGIN = timedelta(minutes=10)


def take(
    db: firestore.Client, state_ref: firestore.DocumentReference, mode: Mode, *, restart: bool, deadline: float
) -> tuple[dict[str, Any], str]:
    """The state document and this run's id (a cut-off run's, to resume it), with the lease taken.

    In a transaction, so two runs starting together cannot both hold it; ReconcileBusy otherwise.
    """

    def body(attempt: transaction.Attempt) -> tuple[dict[str, Any], str]:
        snapshot = attempt.read([state_ref])[state_ref.path]
        state: dict[str, Any] = (snapshot.to_dict() if snapshot.exists else None) or {}
        lease_until = state.get("lease_until")
        if isinstance(lease_until, datetime) and lease_until > datetime.now(UTC):
            raise ReconcileBusy(f"another reconcile run holds the lease until {lease_until.isoformat()}")
        saved = state.get(str(mode))
        resumable = isinstance(saved, dict) and isinstance(saved.get("run_id"), str) and not restart
        run_id = str(saved["run_id"]) if resumable and isinstance(saved, dict) else uuid.uuid4().hex[:12]
        lease = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
        attempt.set(state_ref, {"lease_until": lease, "lease_owner": run_id}, merge=["lease_until", "lease_owner"])
        return state, run_id

    try:
        return transaction.run(db, deadline, body)
    except StoreUnavailable as error:
        raise ReconcileStopped(f"Firestore failed taking the lease: {error}") from None


def release(db: firestore.Client, state_ref: firestore.DocumentReference) -> None:
    """Let the next run start at once (a killed run's lease expires by itself)."""
    state_ref.set(
        {"lease_until": firestore.DELETE_FIELD, "lease_owner": firestore.DELETE_FIELD},
        merge=True,
        timeout=READ_TIMEOUT_SECONDS,
    )


def checkpoint(run: Run, phase: int, offset: int) -> None:
    """Where a cut-off run resumes, and the lease renewed (plain write: the lease keeps others out)."""
    if run.report.dry_run:
        return
    progress = {
        "run_id": run.run_id,
        "phase": phase,
        "offset": offset,
        "tallies": {kind: tally.as_dict() for kind, tally in run.report.tallies.items()},
        "saved_at": firestore.SERVER_TIMESTAMP,
    }
    lease = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
    run.with_store_retries(
        "saving the checkpoint",
        lambda: run.state_ref.set(
            {str(run.report.mode): progress, "lease_until": lease, "lease_owner": run.run_id},
            merge=True,
            timeout=READ_TIMEOUT_SECONDS,
        ),
    )


def finish(run: Run, state: dict[str, Any], mode: Mode, started: float) -> None:
    """A completed run: its progress cleared, the next incremental's starting point, the lease released."""
    began_ms = kinds.now_ms() - round((time.monotonic() - started) * 1000)
    since = began_ms - INCREMENTAL_MARGIN // timedelta(milliseconds=1)
    report = run.report
    summary = {"outcome": report.outcome, "drift": report.drift, "finished_at": firestore.SERVER_TIMESTAMP}
    update: dict[str, Any] = {
        str(mode): firestore.DELETE_FIELD,
        f"last_{mode}": summary,
        "incremental_since_ms": since,
    }
    if mode is Mode.INCREMENTAL and isinstance(state.get("incremental_since_ms"), int):
        update["incremental_since_ms"] = max(since, int(state["incremental_since_ms"]))
    run.with_store_retries(
        "saving the result", lambda: run.state_ref.set(update, merge=True, timeout=READ_TIMEOUT_SECONDS)
    )

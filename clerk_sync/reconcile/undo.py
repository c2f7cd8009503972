"""Undoing a run's deletions: the way out for a database a run with a wrong key (or a wrong 404) damaged.

A tombstone keeps an object deleted whatever arrives later, so a wrong deletion is permanent until
its tombstone goes. Reconcile's deletions carry the message id `reconcile_{run_id}_deleted_{key}`:
tombstones written since issue 19 name it in `deleted_by`, and older ones are found through their
event records (kept for EVENT_LOG_TTL_DAYS). For each, Clerk is asked: an object Clerk still holds
was deleted wrongly (Clerk never reuses ids), so its tombstone goes; the full run that follows
(without deletions) writes Clerk's state back, memberships included. A tombstone a real deletion
webhook wrote, or one whose object Clerk confirms gone, stays.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from clerk_sync import transaction
from clerk_sync.reconcile import kinds
from clerk_sync.reconcile.context import Run

__all__ = ["ALL_RUNS", "RUN_ID", "deleting_run", "undo_deletions"]

ALL_RUNS = "all"
RUN_ID = re.compile(r"[0-9a-f]{12}")
DELETION_ID = re.compile(r"reconcile_([0-9a-f]{12})_deleted_")
PREFIX_END = "\uf8ff"  # sorts after every character a message id holds
RECORDS_PAGE = 1000


def deleting_run(message_id: object) -> str | None:
    """The reconcile run that wrote a tombstone (`deleted_by`), or None when a webhook (or nothing) did."""
    match = DELETION_ID.match(message_id) if isinstance(message_id, str) else None
    return match.group(1) if match else None


def undo_deletions(run: Run, run_id: str) -> None:
    """Remove the tombstones run `run_id` (or every run: ALL_RUNS) wrote whose objects Clerk still holds."""
    prefix = "reconcile_" if run_id == ALL_RUNS else f"reconcile_{run_id}_deleted_"
    for kind in kinds.KINDS:
        restored = kept = 0
        for ids, message_id in _deletions(run, kind, prefix):
            if not _alive(run, kind, ids):
                kept += 1  # Clerk confirms the deletion
            elif run.report.dry_run:
                restored += 1
            else:
                restored += _remove_tombstone(run, kind, ids["clerk_id"], message_id)
        run.report.undone[kind] = {"restored": restored, "kept": kept}
        if restored or kept:
            run.progress.note(f"{kind}: tombstones of run {run_id}: {restored} of objects Clerk holds, {kept} kept")


def _deletions(run: Run, kind: str, prefix: str) -> list[tuple[dict[str, str], str]]:
    """Each object a matching run deleted, with the deletion's message id: from tombstones and event records."""
    found: dict[str, tuple[dict[str, str], str]] = {}
    tombstones = run.db.collection(kinds.tombstones(run.settings.paths, kind))
    for data in _range(run, tombstones, "deleted_by", prefix):
        ids = _ids(kind, data, data.get("membership_id") if kind == "memberships" else data.get("clerk_id"))
        if ids is not None and deleting_run(data.get("deleted_by")):
            found[ids["clerk_id"]] = (ids, str(data["deleted_by"]))
    for record in _deletion_records(run, kinds.DELETE_TYPE[kind]):
        ids = _ids(kind, record, record.get("clerk_id"))
        message_id = record.get("svix_id")
        if (
            ids is not None
            and isinstance(message_id, str)
            and message_id.startswith(prefix)
            and deleting_run(message_id)
        ):
            found.setdefault(ids["clerk_id"], (ids, message_id))
    return list(found.values())


def _deletion_records(run: Run, event_type: str) -> Iterator[dict[str, Any]]:
    """The event records of every deletion of this type, page by page (`make indexes` leaves `svix_id`
    unindexed, so they are found by `type` and told apart by their svix id here)."""
    events = run.db.collection(run.settings.paths.events)
    last: Any = None
    while True:
        query = events.where(filter=FieldFilter("type", "==", event_type)).order_by("__name__").limit(RECORDS_PAGE)
        if last is not None:
            query = query.start_after(last)
        snapshots = run.with_store_retries(
            f"reading {event_type} records", functools.partial(_read_whole, query, run.read_timeout)
        )
        run.report.firestore_reads += len(snapshots)
        yield from (snapshot.to_dict() or {} for snapshot in snapshots)
        if len(snapshots) < RECORDS_PAGE:
            return
        last = snapshots[-1]


def _read_whole(query: Any, timeout: float) -> list[firestore.DocumentSnapshot[Any]]:
    return list(query.stream(retry=transaction.NO_RETRY, timeout=timeout))


def _ids(kind: str, data: dict[str, Any], clerk_id: object) -> dict[str, str] | None:
    """The object's id (and, for a membership, its organization and user), as fetching it needs."""
    if not isinstance(clerk_id, str) or not clerk_id:
        return None
    if kind != "memberships":
        return {"clerk_id": clerk_id}
    organization_id, user_id = data.get("organization_id"), data.get("user_id")
    if not isinstance(organization_id, str) or not isinstance(user_id, str):
        return None
    return {"clerk_id": clerk_id, "organization_id": organization_id, "user_id": user_id}


def _range(run: Run, collection: firestore.CollectionReference, field: str, prefix: str) -> list[dict[str, Any]]:
    """Every document whose `field` begins with `prefix`, read whole (they are the run's deletions: few)."""
    query = collection.where(filter=FieldFilter(field, ">=", prefix)).where(
        filter=FieldFilter(field, "<", prefix + PREFIX_END)
    )
    snapshots = run.with_store_retries(
        f"reading {collection.id}",
        lambda: list(query.stream(retry=transaction.NO_RETRY, timeout=run.read_timeout)),
    )
    run.report.firestore_reads += len(snapshots)
    return [snapshot.to_dict() or {} for snapshot in snapshots]


def _alive(run: Run, kind: str, ids: dict[str, str]) -> bool:
    """Whether Clerk still holds the object (a membership: the same membership id, not a re-join)."""
    stored = {**ids, "membership_id": ids["clerk_id"]} if kind == "memberships" else ids
    current = run.api.fetch(kind, stored)
    return current is not None and (kind != "memberships" or current.get("id") == ids["clerk_id"])


def _remove_tombstone(run: Run, kind: str, clerk_id: str, message_id: str) -> int:
    """Delete the tombstone if that run's deletion still wrote it (1), not a webhook's (0)."""
    reference = run.db.collection(kinds.tombstones(run.settings.paths, kind)).document(clerk_id)

    def body(attempt: transaction.Attempt) -> int:
        snapshot = attempt.read([reference])[reference.path]
        deleted_by = (snapshot.to_dict() or {}).get("deleted_by") if snapshot.exists else None
        if not snapshot.exists or deleted_by not in {None, message_id}:
            return 0  # gone already, or a real deletion webhook's: authoritative
        attempt.delete(reference)
        return 1

    seconds = run.settings.firestore_deadline_seconds
    removed: int = run.with_store_retries(
        f"removing {reference.path}", lambda: transaction.run(run.db, time.monotonic() + seconds, body)
    )
    return removed

"""The repairs: each difference applied through the webhook's own transactions, deletions included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clerk_sync import events, ids, transaction, users
from clerk_sync.outcome import Outcome
from clerk_sync.reconcile import kinds, listing
from clerk_sync.reconcile.comparison import compare
from clerk_sync.reconcile.context import READ_TIMEOUT_SECONDS, Run

__all__ = ["compare_and_repair", "find_extras", "repair", "settle_conflicts"]


def compare_and_repair(run: Run, kind: str, page: list[dict[str, Any]]) -> None:
    """Parse a page of Clerk objects, compare with Firestore, apply what differs."""
    repair(run, kind, compare(run, kind, page))


def repair(run: Run, kind: str, needed: list[tuple[str, events.Change, str]]) -> None:
    """Apply each change; count what it repaired, keep conflicts for one more try at the end."""
    tally = run.report.tallies[kind]

    def one(item: tuple[str, events.Change, str]) -> tuple[str, events.Change, str, Outcome]:
        key, change, verdict = item
        updated_ms = kinds.ms(change.updated_at)  # type: ignore[attr-defined]
        return key, change, verdict, run.apply(change, f"reconcile_{run.run_id}_{key}_{updated_ms}")

    for key, change, verdict, outcome in run.pool.map(one, needed):
        if outcome is Outcome.APPLIED:
            setattr(tally, verdict, getattr(tally, verdict) + 1)
            tally.conflicts.pop(key, None)
        elif outcome is Outcome.CONFLICT:
            tally.conflicts[key] = claim_holder(run, change)
            run.pending.setdefault(kind, {})[key] = (change, verdict)
        elif outcome is Outcome.STALE:
            tombstone = kinds.tombstone(run.db, run.settings, kind, change).get(timeout=READ_TIMEOUT_SECONDS)
            run.report.firestore_reads += 1
            if tombstone.exists:
                tally.skipped[key] = "deleted in Firestore (tombstone) but alive in Clerk"
            else:
                tally.in_sync += 1  # a newer webhook got there first
        else:  # this run applied exactly this version already (a resumed page)
            tally.in_sync += 1


def claim_holder(run: Run, change: events.Change) -> str | None:
    """Who holds the address a conflicting user wants (an id, never the address)."""
    document = getattr(change, "document", None)
    email_key = users.email_key(document) if isinstance(document, dict) else None
    if not email_key:
        return None
    claim = run.db.collection(run.settings.paths.claims).document(ids.document_id(email_key))
    snapshot = claim.get(timeout=READ_TIMEOUT_SECONDS)
    owner = snapshot.get("clerk_id") if snapshot.exists else None
    return owner if isinstance(owner, str) else None


def settle_conflicts(run: Run, kind: str) -> None:
    """An address may move from A to B with B listed first: once A is written, B's retry succeeds."""
    pending = run.pending.pop(kind, {})
    for key in pending:
        run.report.tallies[kind].conflicts.pop(key, None)
    repair(run, kind, [(key, change, verdict) for key, (change, verdict) in pending.items()])
    run.pending.pop(kind, None)  # what conflicts still is reported, not retried again


def find_extras(run: Run, kind: str) -> None:
    """Firestore objects Clerk no longer lists: deleted once Clerk confirms it (GET by id -> 404)."""
    tally = run.report.tallies[kind]
    listed = run.seen.get(kind)
    if listed is None:
        listed = {kinds.key(kind, data) for page in listing.pages(run, kind, 0, "+created_at") for data in page[1]}
    for stored in stored_objects(run, kind):
        key = kinds.stored_key(kind, stored)
        if key in listed:
            continue
        current = run.api.fetch(kind, stored)
        if current is not None:  # listed late or moved: compare it like any listed object
            compare_and_repair(run, kind, [current])
            continue
        tally.extra += 1
        if run.report.dry_run:
            continue
        deletion = events.parse_event(kinds.deletion(kind, stored))
        assert not isinstance(deletion, events.IgnoredEvent)
        run.apply(deletion, f"reconcile_{run.run_id}_deleted_{key}")


def stored_objects(run: Run, kind: str) -> Iterator[dict[str, Any]]:
    """What Firestore holds of this kind (synced documents only: an app's own stay out of it)."""
    query = kinds.stored_query(run.db, run.settings.paths, kind)
    for snapshot in query.stream(retry=transaction.NO_RETRY, timeout=READ_TIMEOUT_SECONDS * 10):
        run.report.firestore_reads += 1
        data = snapshot.to_dict() or {}
        if kinds.synced(run.settings.paths, kind, snapshot.reference.path, data):
            yield data

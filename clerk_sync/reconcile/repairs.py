"""The repairs: each difference applied through the webhook's own transactions, deletions included."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

from google.cloud import firestore

from clerk_sync import events, ids, transaction, users
from clerk_sync.outcome import Outcome
from clerk_sync.reconcile import guards, kinds, listing, undo
from clerk_sync.reconcile.comparison import compare
from clerk_sync.reconcile.context import Run
from clerk_sync.reconcile.seen import Seen

__all__ = [
    "STORED_PAGE",
    "compare_and_repair",
    "find_extras",
    "remove_extras",
    "repair",
    "retry_conflicts",
    "settle_conflicts",
]

STORED_PAGE = 1000  # Firestore documents per read when looking for deletions


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
            tombstone = run.get(kinds.tombstone(run.db, run.settings, kind, change))
            deleting_run = (
                undo.deleting_run((tombstone.to_dict() or {}).get("deleted_by")) if tombstone.exists else None
            )
            if deleting_run is not None:
                tally.skipped[key] = (
                    f"deleted by reconcile run {deleting_run} but alive in Clerk: reconcile --undo-run {deleting_run}"
                )
            elif tombstone.exists:
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
    snapshot = run.get(run.db.collection(run.settings.paths.claims).document(ids.document_id(email_key)))
    owner = snapshot.get("clerk_id") if snapshot.exists else None
    return owner if isinstance(owner, str) else None


def settle_conflicts(run: Run, kind: str) -> None:
    """An address may move from A to B with B listed first: once A is written, B's retry succeeds.

    What still conflicts stays pending (and reported) for the retry after the deletions.
    """
    pending = run.pending.pop(kind, {})
    for key in pending:
        run.report.tallies[kind].conflicts.pop(key, None)
    repair(run, kind, [(key, change, verdict) for key, (change, verdict) in pending.items()])


def retry_conflicts(run: Run, user_ids: Iterable[str]) -> None:
    """Users that conflicted earlier (before a deletion freed their address, in a cut-off invocation, in
    the last run), fetched from Clerk again unless this run holds them already, and retried."""
    pending = run.pending.get("users", {})
    for user_id in sorted(set(user_ids) - set(pending)):
        current = run.api.fetch("users", {"clerk_id": user_id})
        run.report.clerk_requests = run.api.requests
        if current is None:  # gone from Clerk: nothing to wait for (a full run deletes it)
            run.report.tallies["users"].conflicts.pop(user_id, None)
        else:
            compare_and_repair(run, "users", [current])
    settle_conflicts(run, "users")


def remove_extras(run: Run, removed_kinds: tuple[str, ...]) -> bool:
    """Delete what Firestore holds of these kinds and Clerk confirms gone; False when the budget ran out.

    Every kind's deletions are found (and confirmed, GET by id -> 404) before any is applied, so
    the deletion breaker stops the run before it deletes anything of them.
    """
    found = {kind: find_extras(run, kind) for kind in removed_kinds}
    guards.check_mass_deletion(
        {kind: (len(gone), stored, complete) for kind, (gone, stored, complete) in found.items()},
        allowed=run.allow_mass_deletion,
    )
    for kind, (gone, _, _) in found.items():
        run.report.tallies[kind].extra += len(gone)
        if run.report.dry_run:
            continue
        for stored in gone:
            if run.out_of_time():
                return False
            deletion = events.parse_event(kinds.deletion(kind, stored))
            assert not isinstance(deletion, events.IgnoredEvent)
            run.apply(deletion, f"reconcile_{run.run_id}_deleted_{kinds.stored_key(kind, stored)}")
    return True


def find_extras(run: Run, kind: str) -> tuple[list[dict[str, Any]], int, bool]:
    """What Firestore holds of a kind that Clerk no longer has, how much it holds, and whether all were counted.

    Firestore is read in pages closed before any call to Clerk. An object a listing missed is
    asked for by id: one Clerk still has is compared like any listed object, never deleted. Past
    the deletion limit, counting stops (unless mass deletion is allowed): the run stops anyway.
    """
    listed = run.seen.get(kind)
    if listed is None:  # this invocation listed only part of the kind (it resumed a run): list it whole
        listed = Seen()
        for _, page in listing.kind_pages(run, kind, listing.Position()):
            for data in page:
                listed.add(kinds.key(kind, data))
    stored_count, candidates = 0, []
    for page in stored_pages(run, kind):
        stored_count += len(page)
        candidates += [stored for stored in page if kinds.stored_key(kind, stored) not in listed]
    limit = None if run.allow_mass_deletion else guards.deletion_limit(stored_count)
    gone: list[dict[str, Any]] = []
    for stored in candidates:
        if limit is not None and len(gone) > limit:
            return gone, stored_count, False
        current = run.api.fetch(kind, stored)
        if current is not None:  # listed late or moved: compare it like any listed object
            compare_and_repair(run, kind, [current])
        else:
            gone.append(stored)
    return gone, stored_count, True


def stored_pages(run: Run, kind: str) -> Iterator[list[dict[str, Any]]]:
    """What Firestore holds of this kind (synced documents only: an app's own stay out of it), page by page.

    Each page is read whole before it is handed on: no query stays open while Clerk is asked.
    """
    last: Any = None
    while True:
        query = kinds.stored_query(run.db, run.settings.paths, kind).order_by("__name__").limit(STORED_PAGE)
        if last is not None:
            query = query.start_after(last)
        snapshots = run.with_store_retries(
            f"reading stored {kind}", functools.partial(_read_whole, query, run.read_timeout)
        )
        run.report.firestore_reads += len(snapshots)
        yield [
            data
            for snapshot in snapshots
            if kinds.synced(run.settings.paths, kind, snapshot.reference.path, data := snapshot.to_dict() or {})
        ]
        if len(snapshots) < STORED_PAGE:
            return
        last = snapshots[-1]


def _read_whole(query: Any, timeout: float) -> list[firestore.DocumentSnapshot[Any]]:
    return list(query.stream(retry=transaction.NO_RETRY, timeout=timeout))

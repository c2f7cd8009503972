"""Reconcile's billing phase: Clerk's plans copied, and every payer's subscription compared item by item.

After the listings and the deletions of a full run (and in `backfill`): the plans are copied as
Clerk lists them (plans.py) and their features brought to the stored items. Then every subscription
item of the instance is listed (`GET /billing/subscription_items`, free plans included) and grouped
by payer; a payer whose items agree with Firestore's (each item's `updated_at` and digest) costs
nothing more. Any other payer's subscription is fetched (`GET /users/{id}/billing/subscription` or the
organization's) and applied through the webhook's own transaction, which merges it item by item. A
stored subscription whose payer Clerk answers 404 for is deleted (a full run with deletions only),
under the same breaker as every other deletion.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from clerk_sync import billing, kind, plans, subscriptions, transaction, versions
from clerk_sync.outcome import Outcome
from clerk_sync.payload import MalformedEvent
from clerk_sync.reconcile import guards, kinds
from clerk_sync.reconcile.clerk_api import ClerkUnavailable
from clerk_sync.reconcile.context import Run

__all__ = ["SPARE_STATUSES", "reconcile_billing"]

# Item statuses a subscription's list may drop (ended items leave it): listed but not stored is fine.
SPARE_STATUSES = frozenset({"ended", "abandoned", "expired", "incomplete"})
Payer = tuple[str, str]  # (payer type, payer id)


def reconcile_billing(run: Run) -> bool:
    """Plans, then subscriptions; False when the budget ran out (the next run does the phase again)."""
    try:
        listed_plans = run.api.plans()
    except ClerkUnavailable as problem:
        # An instance without Clerk Billing: nothing to copy, and nothing else of the run is lost.
        run.progress.note(f"billing: not read ({problem})")
        return True
    finally:
        run.report.clerk_requests = run.api.requests
    _copy_plans(run, listed_plans)
    return _subscriptions(run)


def _copy_plans(run: Run, listed: list[dict[str, Any]]) -> None:
    tally = run.report.tallies["plans"]
    try:
        copied = plans.copy_plans(
            run.db, run.settings.paths, listed, timeout=run.read_timeout, write=not run.report.dry_run
        )
    except MalformedEvent as problem:
        tally.skipped["billing_plans"] = f"not copied: {problem}"
        return
    tally.missing += copied.added
    tally.outdated += copied.changed
    tally.extra += copied.removed
    tally.in_sync += copied.unchanged
    if not run.report.dry_run and (copied.added or copied.changed):
        changed = plans.refresh_features(run.db, run.settings.paths, timeout=run.read_timeout)
        if changed:
            run.progress.note(f"billing: features of {changed} subscriptions brought up to date")


def _listed_items(run: Run) -> dict[Payer, dict[str, dict[str, Any]]]:
    """Every subscription item Clerk has, as the document would hold it, by payer."""
    by_payer: dict[Payer, dict[str, dict[str, Any]]] = defaultdict(dict)
    offset = 0
    while True:
        page = run.api.subscription_items(offset, run.page_size)
        run.report.clerk_requests = run.api.requests
        for item in page:
            try:
                payer = billing.payer_from(item)
                item_id, entry = subscriptions.item_entry(item, "item")
            except MalformedEvent as problem:
                run.report.tallies["subscriptions"].skipped[str(item.get("id"))] = str(problem)
                continue
            by_payer[(payer.type, payer.id)][item_id] = entry
        if len(page) < run.page_size:
            return by_payer
        offset += len(page)


def _stored(run: Run) -> dict[Payer, dict[str, Any]]:
    """Every subscription document of this deployment, by payer (its items' versions and its ids)."""
    query = run.db.collection_group(billing.BILLING).select(["subscription_id", "payer_type", "payer_id", "items"])
    snapshots = run.with_store_retries(
        "reading stored subscriptions",
        lambda: list(query.stream(retry=transaction.NO_RETRY, timeout=run.read_timeout)),
    )
    run.report.firestore_reads += len(snapshots)
    found: dict[Payer, dict[str, Any]] = {}
    for snapshot in snapshots:
        owner = billing.payer_of(run.settings.paths, snapshot.reference.path, 1)
        data = snapshot.to_dict() or {}
        if owner is not None and isinstance(data.get("subscription_id"), str):
            found[(owner[0], owner[1])] = data
    return found


def _agrees(listed: dict[str, dict[str, Any]], stored: dict[str, Any]) -> bool:
    """Whether each listed item is stored at its version, and each stored item that grants access is listed."""
    items = stored.get(subscriptions.ITEMS)
    items = items if isinstance(items, dict) else {}
    for item_id, entry in listed.items():
        kept = items.get(item_id)
        if kept is None:
            if entry.get("status") in SPARE_STATUSES:
                continue
            return False
        same = (
            kept.get("updated_at") == entry["updated_at"]
            and kept.get(versions.DIGEST_FIELD) == entry[versions.DIGEST_FIELD]
        )
        if not same and not versions.is_older(entry["updated_at"], entry[versions.DIGEST_FIELD], kept):
            return False  # Firestore's item is older than Clerk's
    return all(
        item_id in listed
        for item_id, kept in items.items()
        if isinstance(kept, dict) and kept.get("status") in billing.GRANTING_STATUSES
    )


def _subscriptions(run: Run) -> bool:
    tally = run.report.tallies["subscriptions"]
    listed = _listed_items(run)
    stored = _stored(run)
    gone: list[tuple[Payer, dict[str, Any]]] = []
    for payer in sorted(set(listed) | set(stored)):
        if run.out_of_time():
            return False
        if payer in listed and payer in stored and _agrees(listed[payer], stored[payer]):
            tally.in_sync += 1
            continue
        current = run.api.subscription(*payer)
        run.report.clerk_requests = run.api.requests
        if current is None:
            if payer in stored:
                gone.append((payer, stored[payer]))
            continue
        try:
            change = subscriptions.parse_backend_subscription(payer[0], payer[1], current)
        except MalformedEvent as problem:
            tally.skipped[f"{payer[0]}/{payer[1]}"] = str(problem)
            continue
        verdict = "outdated" if payer in stored else "missing"
        if run.report.dry_run:
            setattr(tally, verdict, getattr(tally, verdict) + 1)
            continue
        message_id = f"reconcile_{run.run_id}_subscription_{payer[1]}_{kinds.ms(change.updated_at)}"
        outcome = run.apply(change, message_id)
        if outcome is Outcome.APPLIED:
            setattr(tally, verdict, getattr(tally, verdict) + 1)
        else:
            tally.in_sync += 1  # the webhook had it (or something newer) already
    return _remove(run, gone, len(stored))


def _remove(run: Run, gone: list[tuple[Payer, dict[str, Any]]], stored_count: int) -> bool:
    """Subscriptions of payers Clerk answers 404 for: deleted (full runs with deletions), under the breaker."""
    if not gone:
        return True
    guards.check_mass_deletion({"subscriptions": (len(gone), stored_count, True)}, allowed=run.allow_mass_deletion)
    run.report.tallies["subscriptions"].extra += len(gone)
    if run.report.dry_run or not run.report.deletions:
        return True
    for (payer_type, payer_id), data in gone:
        if run.out_of_time():
            return False
        ids = {"subscription_id": str(data["subscription_id"]), "payer_type": payer_type, "payer_id": payer_id}
        deletion = kind.Deletion(subscriptions.KIND, subscriptions.KIND.deletion_type, ids, _now())
        run.apply(deletion, f"reconcile_{run.run_id}_deleted_subscription_{payer_id}")
    return True


def _now() -> datetime:
    return datetime.now(UTC)

"""Clerk Billing's plans in Firestore: copied from the Backend API (`GET /billing/plans`), never from webhooks.

Documents (names are part of the data contract):
  billing_plans/{plan_id}   a plan as a pricing page shows it, and its features' slugs

Clerk sends no webhook for plans, so `backfill` and `reconcile` copy them. A subscription item
takes its plan's features when the item is written (subscriptions.py reads the plan in the same
batched read); `refresh_features` brings every stored item's features up to date after a copy, so a
feature added to a plan reaches `active_features` (and the rules) without waiting for the payer's
next billing event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import billing, documents, payload, subscriptions, transaction
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import NO_RETRY, Attempt

__all__ = ["PLAN_FIELDS", "Copied", "copy_plans", "plan_document", "refresh_features"]

# As the data contract declares them (clerk_sync/documents.py).
PLAN_FIELDS = documents.PLAN.names_set_by("clerk")
MAX_PLANS = 400  # one batch of writes and deletes; Clerk instances have a handful of plans


@dataclass(frozen=True)
class Copied:
    """What a copy did (or, without writing, would do): plans added, changed, removed (gone from Clerk), unchanged."""

    added: int
    changed: int
    removed: int
    unchanged: int


def _features(plan: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    listed = plan.get("features")
    if listed is None:
        return [], []
    if not isinstance(listed, list):
        raise MalformedEvent("plan.features is not a list")
    slugs: list[str] = []
    details: list[dict[str, Any]] = []
    for index, feature in enumerate(listed):
        where = f"plan.features[{index}]"
        if not isinstance(feature, dict) or not isinstance(feature.get("slug"), str) or not feature["slug"]:
            raise MalformedEvent(f"{where} has no slug")
        slugs.append(feature["slug"])
        details.append(
            {
                "slug": feature["slug"],
                "name": payload.optional_str(feature, "name", where),
                "description": payload.optional_str(feature, "description", where),
            }
        )
    return slugs, details


def plan_document(plan: object) -> tuple[str, dict[str, Any]]:
    """A plan's id and its document, from one entry of `GET /billing/plans`; MalformedEvent if unusable."""
    if not isinstance(plan, dict):
        raise MalformedEvent("a plan is not an object")
    plan_id = billing.plan_id(plan.get("id"), "plan.id")
    if plan_id is None:
        raise MalformedEvent("missing plan.id")
    slugs, details = _features(plan)
    trial_days = plan.get("free_trial_days")
    document = {
        "plan_id": plan_id,
        "slug": payload.optional_str(plan, "slug", "plan"),
        "name": payload.optional_str(plan, "name", "plan"),
        "description": payload.optional_str(plan, "description", "plan"),
        "for_payer_type": payload.optional_str(plan, "for_payer_type", "plan"),
        "is_default": payload.flag(plan, "is_default", "plan"),
        "is_recurring": payload.flag(plan, "is_recurring", "plan"),
        "publicly_visible": payload.flag(plan, "publicly_visible", "plan"),
        "fee": billing.money(plan, "fee", "plan"),
        "annual_fee": billing.money(plan, "annual_fee", "plan"),
        "annual_monthly_fee": billing.money(plan, "annual_monthly_fee", "plan"),
        "free_trial_enabled": payload.flag(plan, "free_trial_enabled", "plan"),
        "free_trial_days": payload.optional_int(plan, "free_trial_days", "plan") if trial_days is not None else None,
        "features": slugs,
        "feature_details": details,
    }
    return plan_id, document


def copy_plans(
    db: firestore.Client, paths: Paths, listed: Iterable[object], *, timeout: float, write: bool = True
) -> Copied:
    """Make `billing_plans` exactly Clerk's complete plan list (one batch; `write=False` only counts);
    StoreUnavailable on Firestore trouble.

    Only the sync writes there, so a plan Clerk no longer lists is removed. Raises MalformedEvent
    (nothing written) when an entry is unusable, ValueError beyond MAX_PLANS.
    """
    plans = dict(plan_document(plan) for plan in listed)
    if len(plans) > MAX_PLANS:
        raise ValueError(f"more than {MAX_PLANS} plans")
    collection = db.collection(paths.billing_plans)
    try:
        stored = {
            snapshot.id: snapshot.to_dict() or {}
            for snapshot in collection.select(list(PLAN_FIELDS)).stream(retry=NO_RETRY, timeout=timeout)
        }
        batch = db.batch()
        added = changed = removed = 0
        for plan_id, document in plans.items():
            if {name: stored.get(plan_id, {}).get(name) for name in PLAN_FIELDS} != document:
                batch.set(collection.document(plan_id), {**document, "synced_at": firestore.SERVER_TIMESTAMP})
                added, changed = (added + 1, changed) if plan_id not in stored else (added, changed + 1)
        for plan_id in set(stored) - set(plans):
            batch.delete(collection.document(plan_id))
            removed += 1
        if write and (added or changed or removed):
            batch.commit(retry=None, timeout=timeout)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise StoreUnavailable(f"plans: {type(error).__name__}") from error
    return Copied(added=added, changed=changed, removed=removed, unchanged=len(plans) - added - changed)


def _refresh(attempt: Attempt, reference: firestore.DocumentReference, features: dict[str, list[str]]) -> bool:
    """Give the stored items their plans' features as copied, and derive again; False when nothing changes."""
    snapshot = attempt.read([reference])[reference.path]
    data = (snapshot.to_dict() or {}) if snapshot.exists else {}
    items = data.get(subscriptions.ITEMS)
    if not isinstance(items, dict):
        return False
    refreshed = {
        item_id: {
            **entry,
            subscriptions.FEATURES: features.get(str(entry.get("plan_id")), entry.get(subscriptions.FEATURES)),
        }
        if isinstance(entry, dict)
        else entry
        for item_id, entry in items.items()
    }
    update = {subscriptions.ITEMS: refreshed, **subscriptions.derived(refreshed)}
    if all(data.get(name) == value for name, value in update.items()):
        return False
    attempt.set(reference, update, merge=list(update))
    return True


def refresh_features(db: firestore.Client, paths: Paths, *, timeout: float) -> int:
    """Bring every subscription's item features and `active_features` in line with the copied plans.

    One transaction per subscription that changes (it re-reads the document, so a delivery between
    the scan and the write is respected); returns how many changed. StoreUnavailable on trouble.
    """
    try:
        features = {
            snapshot.id: list((snapshot.to_dict() or {}).get("features") or [])
            for snapshot in db.collection(paths.billing_plans)
            .select(["features"])
            .stream(retry=NO_RETRY, timeout=timeout)
        }
        owned = [
            snapshot.reference
            for snapshot in db.collection_group(billing.BILLING)
            .select([subscriptions.ITEMS])
            .stream(retry=NO_RETRY, timeout=timeout)
            if billing.payer_of(paths, snapshot.reference.path, 1) is not None
        ]
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise StoreUnavailable(f"refresh features: {type(error).__name__}") from error
    changed = 0
    for reference in owned:
        changed += _refresh_one(db, reference, features, time.monotonic() + timeout)
    return changed


def _refresh_one(
    db: firestore.Client, reference: firestore.DocumentReference, features: dict[str, list[str]], deadline: float
) -> int:
    return int(transaction.run(db, deadline, lambda attempt: _refresh(attempt, reference, features)))

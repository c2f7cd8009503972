"""Subscription events: `subscription.*` (a payer's whole subscription) and `subscriptionItem.*` (one item of it).

Document (names are part of the data contract; see billing.py for where it lives):
  {payer}/billing/subscription   the payer's one subscription: its own fields, its items by id, and
                                 `active_plans` / `active_features` derived from the items

The document is made of parts versioned on their own. The subscription's own fields are ordered by
its `updated_at` (ties by `subscription_digest`); each item by the item's own `updated_at` (ties by
the item's `sync_digest`), whether it arrives nested in a subscription event or alone, so an item
event older than the stored item is stale in either order. A subscription event lists the items
the subscription had at its `updated_at`: when it is the newest such list, a stored item it does not
list goes, unless that item changed after it; and an item event for an item the newest list left out
applies only if it is newer than that list. An event that changes no part (older, or the same
versions again) is stale. The merge is this kind's `ordering` hook; the shared
upsert body does the rest (duplicates, the payer's tombstone, the merge write of owned fields).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from google.cloud import firestore

from clerk_sync import billing, documents, kind, payload, versions
from clerk_sync.delivery import Delivery
from clerk_sync.kind import Admission, Snapshots, Upsert
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = [
    "DERIVED_FIELDS",
    "ITEMS",
    "ITEM_FIELDS",
    "KIND",
    "OWNED_FIELDS",
    "PART_DIGEST",
    "SUBSCRIPTION_FIELDS",
    "SYNCED_FIELDS",
    "derived",
    "parse_backend_subscription",
    "parse_item",
    "parse_subscription",
]

# The subscription's own fields (its part of the document), as clerk_sync/documents.py declares them.
SUBSCRIPTION_FIELDS = tuple(name for name in documents.SUBSCRIPTION.names_set_by("clerk") if name != "items")
PART_DIGEST = "subscription_digest"  # a digest of the subscription's own fields: breaks their ties
# The Backend API's subscription (what reconcile reads) has no canceled_at, ended_at or
# latest_payment_id: the digest covers the fields both sources carry, so the same state read from
# either has the same digest (and reconcile finds it in sync).
UNDIGESTED = frozenset({"canceled_at", "ended_at", "latest_payment_id"})
ITEMS = "items"  # item id -> the item's fields, its `sync_digest` and its plan's `features`
SYNCED_FIELDS = (*SUBSCRIPTION_FIELDS, PART_DIGEST, ITEMS)
# Each item's fields from Clerk (its `sync_digest` covers these).
ITEM_FIELDS = tuple(field.name for field in documents.SUBSCRIPTION_ITEM.fields if field.source == "clerk")
FEATURES = "features"  # inside an item: its plan's feature slugs from billing_plans, null when not copied yet
DERIVED_FIELDS = ("active_plans", "active_features")
ROOM_BYTES = 64 * 1024  # for the derived fields and each item's features, written after the merge
SUBSCRIPTION_TYPES = ("subscription.created", "subscription.updated", "subscription.active", "subscription.pastDue")
ITEM_TYPES = (
    "subscriptionItem.updated",
    "subscriptionItem.active",
    "subscriptionItem.canceled",
    "subscriptionItem.ended",
    "subscriptionItem.abandoned",
    "subscriptionItem.incomplete",
    "subscriptionItem.pastDue",
    "subscriptionItem.upcoming",
    "subscriptionItem.freeTrialEnding",
    "subscriptionItem.created",  # removed from Clerk's catalog in 2026; accepted if it comes
)


def _plan_reads(db: firestore.Client, paths: Paths, change: Upsert) -> list[firestore.DocumentReference]:
    """The plans of the incoming items, read with everything else: their features become the items'."""
    items = change.document.get(ITEMS) or {}
    plan_ids = sorted({entry["plan_id"] for entry in items.values() if entry.get("plan_id")})
    return [db.collection(paths.billing_plans).document(plan_id) for plan_id in plan_ids]


def _stored_part(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The subscription's own fields as stored, when a subscription event has been applied."""
    if not stored or not isinstance(stored.get("updated_at"), datetime) or not isinstance(stored.get(PART_DIGEST), str):
        return None
    return {name: stored.get(name) for name in (*SUBSCRIPTION_FIELDS, PART_DIGEST)}


def _stored_items(stored: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The stored items that carry a version (anything else there is not the sync's)."""
    items = (stored or {}).get(ITEMS)
    if not isinstance(items, dict):
        return {}
    return {
        item_id: entry
        for item_id, entry in items.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("updated_at"), datetime)
        and isinstance(entry.get(versions.DIGEST_FIELD), str)
    }


def _part_is_older(incoming: dict[str, Any], stored: dict[str, Any]) -> bool:
    versioned = {"updated_at": stored["updated_at"], versions.DIGEST_FIELD: stored[PART_DIGEST]}
    return versions.is_older(incoming["updated_at"], incoming[PART_DIGEST], versioned)


def whole_digest(document: dict[str, Any]) -> str:
    """The document's `sync_digest`: of its parts' digests, so equal content gives it however it was merged."""
    items = document.get(ITEMS) or {}
    return versions.content_digest(
        {
            "subscription": document.get(PART_DIGEST),
            "items": {item_id: entry.get(versions.DIGEST_FIELD) for item_id, entry in items.items()},
        }
    )


def _same_version(incoming: dict[str, Any], stored: dict[str, Any], digest_field: str) -> bool:
    return bool(incoming["updated_at"] == stored["updated_at"] and incoming[digest_field] == stored[digest_field])


def _ordering(change: Upsert, stored: dict[str, Any] | None) -> Upsert | None:
    """Each part by its own version: the merged document, or None when the event changes no part (stale)."""
    incoming = change.document
    stored_part = _stored_part(stored)
    stored_items = _stored_items(stored)
    listed: dict[str, dict[str, Any]] = incoming.get(ITEMS) or {}
    part = stored_part
    newest_list = False  # the event's item list is the newest the document has seen
    changed = False
    if PART_DIGEST in incoming:
        incoming_part = {name: incoming[name] for name in (*SUBSCRIPTION_FIELDS, PART_DIGEST)}
        if stored_part is None or not _part_is_older(incoming_part, stored_part):
            part, newest_list = incoming_part, incoming.get(ITEMS) is not None
            changed = stored_part is None or not _same_version(incoming_part, stored_part, PART_DIGEST)
    items = dict(stored_items)
    if newest_list:
        # Not listed now: gone from the subscription, unless it changed after the list was made.
        items = {
            item_id: entry
            for item_id, entry in items.items()
            if item_id in listed or entry["updated_at"] > incoming["updated_at"]
        }
        changed = changed or len(items) != len(stored_items)
    listed_as_of = stored_part["updated_at"] if stored_part is not None else None
    for item_id, entry in listed.items():
        current = stored_items.get(item_id)
        if current is not None:
            older = versions.is_older(entry["updated_at"], entry[versions.DIGEST_FIELD], current)
            if older or _same_version(entry, current, versions.DIGEST_FIELD):
                continue
        elif not newest_list and listed_as_of is not None and entry["updated_at"] <= listed_as_of:
            continue  # the stored list, newer than this version, did not have it
        items[item_id] = entry
        changed = True
    if not changed:
        return None
    if part is None:  # only items so far: the subscription's own fields wait for its event
        part = {**dict.fromkeys(SUBSCRIPTION_FIELDS), PART_DIGEST: None}
        kept = stored or {}
        part.update(
            subscription_id=kept.get("subscription_id") or incoming["subscription_id"],
            payer_type=incoming["payer_type"],
            payer_id=incoming["payer_id"],
            clerk_payer_id=incoming.get("clerk_payer_id") or kept.get("clerk_payer_id"),
        )
    document = {**part, ITEMS: fit(items, payload.MAX_DOCUMENT_BYTES - payload.stored_bytes(part) - ROOM_BYTES)}
    return dataclasses.replace(change, document=document, digest=whole_digest(document))


def fit(items: dict[str, dict[str, Any]], limit: int) -> dict[str, dict[str, Any]]:
    """The items, within `limit` bytes: a merged document must stay under Firestore's 1 MiB, or every
    retry of its event would fail. Items that grant nothing go first, the oldest first; in practice a
    payer has a handful (Clerk's lists drop ended items)."""
    if payload.stored_bytes(items) <= limit:
        return items
    kept = dict(items)
    spare = sorted(
        (entry["updated_at"], item_id)
        for item_id, entry in items.items()
        if entry.get("status") not in billing.GRANTING_STATUSES
    )
    for _, item_id in spare:
        del kept[item_id]
        if payload.stored_bytes(kept) <= limit:
            break
    return kept


def _plan_features(snapshot: firestore.DocumentSnapshot[Any] | None) -> list[str] | None:
    if snapshot is None or not snapshot.exists:
        return None
    features = (snapshot.to_dict() or {}).get("features")
    if not isinstance(features, list) or not all(isinstance(feature, str) for feature in features):
        return None
    return list(features)


def derived(items: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """`active_plans` and `active_features`: the slugs and features of the items that grant access now."""
    granting = [entry for entry in items.values() if entry.get("status") in billing.GRANTING_STATUSES]
    slugs = {(entry.get("plan") or {}).get("slug") for entry in granting}
    features = {feature for entry in granting for feature in entry.get(FEATURES) or []}
    return {
        "active_plans": sorted(slug for slug in slugs if isinstance(slug, str) and slug),
        "active_features": sorted(features),
    }


def _admit(
    attempt: Attempt, delivery: Delivery, change: Upsert, snapshots: Snapshots, stored: dict[str, Any] | None
) -> Admission:
    """Each item gets its plan's features (when the plan has been copied), then the derived fields."""
    plans = attempt.db.collection(delivery.paths.billing_plans)
    items: dict[str, dict[str, Any]] = {}
    for item_id, entry in change.document[ITEMS].items():
        plan = entry.get("plan_id")
        known = _plan_features(snapshots.get(plans.document(plan).path)) if plan else None
        items[item_id] = {**entry, FEATURES: known if known is not None else entry.get(FEATURES)}
    return Admission(Outcome.APPLIED, {**change.document, ITEMS: items, **derived(items)})


KIND = kind.Kind(
    family="subscription",
    id_field="subscription_id",
    id_fields=("subscription_id", "payer_type", "payer_id"),
    place=("payer_type", "payer_id"),
    document_id=lambda _ids: billing.SUBSCRIPTION,
    collection=lambda paths, ids: billing.billing_collection(paths, ids["payer_type"], ids["payer_id"]),
    synced_fields=SYNCED_FIELDS,
    guards=billing.payer_guard,
    reads=_plan_reads,
    ordering=_ordering,
    admit=_admit,
    extra_owned=DERIVED_FIELDS,
)
OWNED_FIELDS = KIND.owned_fields


def _plan(plan: dict[str, Any], where: str) -> dict[str, Any]:
    """What an app's billing page shows of the item's plan (webhooks say `amount`, the Backend API `fee`)."""
    fee = billing.money(plan, "fee", where) if "amount" not in plan else None
    return {
        "id": billing.plan_id(plan.get("id"), f"{where}.id"),
        "slug": payload.optional_str(plan, "slug", where),
        "name": payload.optional_str(plan, "name", where),
        "amount": payload.optional_int(plan, "amount", where) if fee is None else fee["amount"],
        "currency": payload.optional_str(plan, "currency", where) if fee is None else fee["currency"],
        "is_recurring": payload.flag(plan, "is_recurring", where),
    }


def item_entry(data: object, where: str) -> tuple[str, dict[str, Any]]:
    """An item's id and its entry in the document (with its digest), from a Clerk subscription item."""
    if not isinstance(data, dict):
        raise MalformedEvent(f"{where} is not an object")
    item_id = payload.clerk_id(data.get("id"), f"{where}.id", "subscription item")
    plan = billing.optional_object(data, "plan", where)
    seats = billing.optional_object(data, "seats", where)
    interval_field = "interval" if "interval" in data else "plan_period"  # the Backend API's name
    entry: dict[str, Any] = {
        "status": payload.optional_str(data, "status", where),
        "plan_id": billing.plan_id(data.get("plan_id"), f"{where}.plan_id")
        or (billing.plan_id(plan.get("id"), f"{where}.plan.id") if plan is not None else None),
        "plan": _plan(plan, f"{where}.plan") if plan is not None else None,
        "interval": payload.optional_str(data, interval_field, where),
        "period_start": payload.optional_time(data, "period_start", where),
        "period_end": payload.optional_time(data, "period_end", where),
        "is_free_trial": payload.flag(data, "is_free_trial", where),
        "seats": payload.optional_int(seats, "quantity", f"{where}.seats") if seats is not None else None,
        "canceled_at": payload.optional_time(data, "canceled_at", where),
        "past_due_at": payload.optional_time(data, "past_due_at", where),
        "ended_at": payload.optional_time(data, "ended_at", where),
        "created_at": payload.optional_time(data, "created_at", where),
        "updated_at": payload.required_time(data, "updated_at", where),
    }
    entry[versions.DIGEST_FIELD] = versions.content_digest(entry)
    return item_id, entry


def _listed_items(data: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The items a subscription lists (`items` in webhooks, `subscription_items` in the Backend API); None: not sent."""
    field = "items" if "items" in data else "subscription_items"
    listed = data.get(field)
    if listed is None:
        return None
    if not isinstance(listed, list):
        raise MalformedEvent(f"data.{field} is not a list")
    items: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(listed):
        item_id, parsed = item_entry(entry, f"data.{field}[{index}]")
        if item_id in items:
            raise MalformedEvent(f"data.{field} lists an item twice")
        items[item_id] = parsed
    return items


def _upsert(event_type: str, ids: dict[str, str], document: dict[str, Any], updated_at: datetime) -> Upsert:
    payload.check_document_size(document, "subscription")
    return Upsert(
        kind=KIND,
        event_type=event_type,
        ids=ids,
        updated_at=updated_at,
        document=document,
        digest=whole_digest(document),
    )


def parse_subscription(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The payer's subscription and the items it lists, from a `subscription.*` body."""
    data = payload.data_of(envelope, body)
    subscription_id = payload.clerk_id(data.get("id"), "data.id", "subscription")
    payer = billing.payer_from(data)
    updated_at = payload.required_time(data, "updated_at")
    clerk_payer_id = payload.optional_str(data, "payer_id")  # checked even when `payer.id` names it too
    part: dict[str, Any] = {
        "subscription_id": subscription_id,
        **payer.ids,
        "clerk_payer_id": payer.clerk_payer_id or clerk_payer_id or None,
        "status": payload.optional_str(data, "status"),
        "active_at": payload.optional_time(data, "active_at"),
        "past_due_at": payload.optional_time(data, "past_due_at"),
        "canceled_at": payload.optional_time(data, "canceled_at"),
        "ended_at": payload.optional_time(data, "ended_at"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
        "latest_payment_id": payload.optional_str(data, "latest_payment_id"),
    }
    part[PART_DIGEST] = versions.content_digest({name: value for name, value in part.items() if name not in UNDIGESTED})
    document = {**part, ITEMS: _listed_items(data)}
    return _upsert(event_type, {"subscription_id": subscription_id, **payer.ids}, document, updated_at)


def parse_backend_subscription(payer_type: str, payer_id: str, data: object) -> Upsert:
    """The payer's subscription as the Backend API answers `GET /users/{id}/billing/subscription` (or the
    organization's), for reconcile and backfill: it names no `payer` object, the path does."""
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    named = "user_id" if payer_type == "user" else "organization_id"
    payer = {"id": data.get("payer_id"), named: payer_id}
    body = json.dumps({"type": "subscription.updated", "data": {**data, "payer": payer}}).encode()
    return parse_subscription("subscription.updated", json.loads(body), body)


def parse_item(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """One item of the payer's subscription, from a `subscriptionItem.*` body (it names its subscription)."""
    data = payload.data_of(envelope, body)
    item_id, entry = item_entry(data, "data")
    subscription_id = payload.clerk_id(data.get("subscription_id"), "data.subscription_id", "subscription")
    payer = billing.payer_from(data)
    document = {
        "subscription_id": subscription_id,
        **payer.ids,
        "clerk_payer_id": payer.clerk_payer_id,
        ITEMS: {item_id: entry},
    }
    return _upsert(event_type, {"subscription_id": subscription_id, **payer.ids}, document, entry["updated_at"])

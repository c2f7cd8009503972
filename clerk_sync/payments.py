"""Payment events: `paymentAttempt.created` / `.updated`, parsed into the payer's payment documents.

Document (names are part of the data contract; see billing.py for where it lives):
  {payer}/billing/subscription/payments/{payment_id}   one payment (`cpa_…`, what the subscription's
                                                       `latest_payment_id` names), as its newest attempt left it

A payment can take several attempts (a failed charge retried); each attempt event carries the
payment's id, and the newest attempt by `updated_at` is the payment's state. Of the payment source
only what an app's billing page shows is kept: the method, the card's brand and its last 4 digits.
"""

from __future__ import annotations

from typing import Any

from clerk_sync import billing, documents, kind, payload
from clerk_sync.kind import Upsert
from clerk_sync.payload import MalformedEvent

__all__ = ["KIND", "OWNED_FIELDS", "PAYMENT_TYPES", "SYNCED_FIELDS", "parse_upsert"]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.PAYMENT.names_set_by("clerk")
PAYMENT_TYPES = ("paymentAttempt.created", "paymentAttempt.updated")

KIND = kind.Kind(
    family="paymentAttempt",
    id_field="payment_id",
    id_fields=("payment_id", "payer_type", "payer_id"),
    place=("payer_type", "payer_id", "payment_id"),
    collection=lambda paths, ids: billing.payments_collection(paths, ids["payer_type"], ids["payer_id"]),
    synced_fields=SYNCED_FIELDS,
    guards=billing.payer_guard,
)
OWNED_FIELDS = KIND.owned_fields


def _failed_reason(data: dict[str, Any]) -> dict[str, Any] | None:
    reason = billing.optional_object(data, "failed_reason", "data")
    if reason is None:
        return None
    return {
        "code": payload.optional_str(reason, "code", "data.failed_reason"),
        "decline_code": payload.optional_str(reason, "decline_code", "data.failed_reason"),
    }


def _totals(data: dict[str, Any]) -> dict[str, Any] | None:
    totals = billing.optional_object(data, "totals", "data")
    if totals is None:
        return None
    return {name: billing.money(totals, name, "data.totals") for name in ("subtotal", "tax_total", "grand_total")}


def _payment_source(data: dict[str, Any]) -> dict[str, Any] | None:
    """The method, the card's brand and last 4: never the gateway's ids."""
    source = billing.optional_object(data, "payment_source", "data")
    if source is None:
        return None
    where = "data.payment_source"
    return {
        "payment_method": payload.optional_str(source, "payment_method", where),
        "card_type": payload.optional_str(source, "card_type", where),
        "last4": payload.optional_str(source, "last4", where),
    }


def _items(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What was paid for: each item's id and plan (the rest is the subscription document's)."""
    listed = data.get("subscription_items")
    if listed is None:
        return []
    if not isinstance(listed, list):
        raise MalformedEvent("data.subscription_items is not a list")
    items = []
    for index, item in enumerate(listed):
        where = f"data.subscription_items[{index}]"
        if not isinstance(item, dict):
            raise MalformedEvent(f"{where} is not an object")
        plan = billing.optional_object(item, "plan", where) or {}
        interval_field = "interval" if "interval" in item else "plan_period"
        items.append(
            {
                "id": payload.clerk_id(item.get("id"), f"{where}.id", "subscription item"),
                "plan_id": billing.plan_id(item.get("plan_id"), f"{where}.plan_id"),
                "plan_slug": payload.optional_str(plan, "slug", f"{where}.plan"),
                "plan_name": payload.optional_str(plan, "name", f"{where}.plan"),
                "interval": payload.optional_str(item, interval_field, where),
            }
        )
    return items


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The payment's document from a `paymentAttempt.*` body."""
    data = payload.data_of(envelope, body)
    payment_id = payload.clerk_id(data.get("payment_id"), "data.payment_id", "payment")
    payer = billing.payer_from(data)
    updated_at = payload.required_time(data, "updated_at")
    document: dict[str, Any] = {
        "payment_id": payment_id,
        "attempt_id": payload.optional_str(data, "id"),
        **payer.ids,
        "clerk_payer_id": payer.clerk_payer_id,
        "statement_id": payload.optional_str(data, "statement_id"),
        "status": payload.optional_str(data, "status"),
        "charge_type": payload.optional_str(data, "charge_type"),
        "failed_reason": _failed_reason(data),
        "totals": _totals(data),
        "payment_source": _payment_source(data),
        "subscription_items": _items(data),
        "billing_date": payload.optional_time(data, "billing_date"),
        "paid_at": payload.optional_time(data, "paid_at"),
        "failed_at": payload.optional_time(data, "failed_at"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
    }
    payload.check_document_size(document, "payment")
    return kind.parsed_upsert(KIND, event_type, {"payment_id": payment_id, **payer.ids}, document, updated_at)

"""Clerk Billing events for `send`: a payer's subscription, one of its items, or a payment attempt.

Shaped field for field like Clerk's webhooks (`subscription.*` nests its items with a null
`subscription_id`, `subscriptionItem.*` names its subscription and payer, `paymentAttempt.*` carries
the card). Ids not given are derived from the payer and the plan, so successive sends about one payer
land on its one subscription and a plan's item keeps its id, as Clerk's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tools.common import ToolError

__all__ = ["BILLING_TYPES", "ITEM_TYPES", "PAYMENT_TYPES", "SUBSCRIPTION_TYPES", "Billing", "build"]

# The types Clerk sends today (the function's parser tables also take older spellings). Spelled out
# here so `send` starts without loading Firestore; tests/test_cli.py keeps them equal to the parser's.
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
)
PAYMENT_TYPES = ("paymentAttempt.created", "paymentAttempt.updated")
BILLING_TYPES = (*SUBSCRIPTION_TYPES, *ITEM_TYPES, *PAYMENT_TYPES)
MONTH_MS = 30 * 24 * 3600 * 1000
ITEM_STATUSES = frozenset({"active", "past_due", "canceled", "ended", "abandoned", "incomplete", "upcoming", "expired"})
# The status an event type stands for, unless --status says otherwise.
STATUS = {
    "subscription.pastDue": "past_due",
    "subscriptionItem.canceled": "canceled",
    "subscriptionItem.ended": "ended",
    "subscriptionItem.abandoned": "abandoned",
    "subscriptionItem.incomplete": "incomplete",
    "subscriptionItem.pastDue": "past_due",
    "subscriptionItem.upcoming": "upcoming",
    "paymentAttempt.created": "pending",
    "paymentAttempt.updated": "paid",
}


@dataclass(frozen=True)
class Billing:
    """What a billing event can be told: the payer, the plan, the status and the ids (None: derived)."""

    user_id: str | None = None
    organization_id: str | None = None
    plan: str = "pro"
    status: str | None = None
    trial: bool = False
    seats: int | None = None
    subscription_id: str | None = None
    item_id: str | None = None
    payment_id: str | None = None


def _suffix(payer_id: str) -> str:
    return payer_id.split("_", 1)[-1]


def _payer(payer_type: str, payer_id: str) -> dict[str, Any]:
    is_user = payer_type == "user"
    return {
        "object": "commerce_payer",
        "id": f"cpayer_{_suffix(payer_id)}",
        "user_id": payer_id if is_user else "",
        "first_name": "Ada" if is_user else "",
        "last_name": "Lovelace" if is_user else "",
        "email": f"ada.{_suffix(payer_id)[-8:].lower()}@example.com" if is_user else "billing@example.com",
        "organization_id": "" if is_user else payer_id,
        "organization_name": "" if is_user else "Analytical Engines",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
        "created_at": 1_700_000_000_000,
        "updated_at": 1_700_000_000_000,
    }


def _item(options: Billing, payer_id: str, status: str, updated_at: int, *, trial: bool) -> dict[str, Any]:
    free = options.plan in {"free", "free_user", "free_org"}
    period_start = updated_at - 60_000
    item: dict[str, Any] = {
        "object": "commerce_subscription_item",
        "id": options.item_id or f"csub_item_{_suffix(payer_id)}_{options.plan}",
        "status": status,
        "is_free_trial": trial,
        "created_at": period_start,
        "updated_at": updated_at,
        "period_start": period_start,
        "period_end": None if free or status == "ended" else period_start + MONTH_MS,
        "interval": "month",
        "plan_id": f"cplan_{options.plan}",
        "plan": {
            "id": f"cplan_{options.plan}",
            "slug": options.plan,
            "name": options.plan.replace("-", " ").replace("_", " ").title(),
            "is_recurring": not free,
            "amount": 0 if free else 2000,
            "currency": "USD",
        },
        "canceled_at": updated_at if status == "canceled" else None,
        "past_due_at": updated_at if status == "past_due" else None,
        "ended_at": updated_at if status == "ended" else None,
        "subscription_id": None,
    }
    if options.seats is not None:
        item["seats"] = {"quantity": options.seats}
    return item


def build(event_type: str, options: Billing, updated_at: int) -> tuple[dict[str, Any], str, str]:
    """The event's `data`, the id it is about, and a detail for the report."""
    if options.organization_id:
        payer_type, payer_id = "organization", options.organization_id
    elif options.user_id:
        payer_type, payer_id = "user", options.user_id
    else:
        raise ToolError(f"{event_type} needs --user-id or --org-id (the payer)")
    subscription_id = options.subscription_id or f"csub_{_suffix(payer_id)}"
    status = options.status or STATUS.get(event_type, "active")
    trial = options.trial or event_type == "subscriptionItem.freeTrialEnding"
    detail = f"  ({payer_type} {payer_id}, {options.plan}, {status})"
    if event_type in PAYMENT_TYPES:
        payment_id = options.payment_id or f"cpa_{_suffix(payer_id)}_{updated_at}"
        item = {**_item(options, payer_id, "active", updated_at, trial=trial), "plan_period": "month"}
        return _payment(payment_id, payer_type, payer_id, status, updated_at, item), payment_id, detail
    item = _item(options, payer_id, status if status in ITEM_STATUSES else "active", updated_at, trial=trial)
    if event_type in ITEM_TYPES:
        standalone = {
            **item,
            "object": "subscription_item",
            "subscription_id": subscription_id,
            "payer": _payer(payer_type, payer_id),
        }
        return standalone, str(item["id"]), detail
    data = {
        "object": "commerce_subscription",
        "id": subscription_id,
        "status": status,
        "active_at": updated_at - 60_000,
        "canceled_at": None,
        "created_at": updated_at - 60_000,
        "ended_at": None,
        "past_due_at": updated_at if status == "past_due" else None,
        "updated_at": updated_at,
        "latest_payment_id": None,
        "payer_id": f"cpayer_{_suffix(payer_id)}",
        "payer": _payer(payer_type, payer_id),
        "payment_source_id": None,
        "items": [item],
    }
    return data, subscription_id, detail


def _payment(
    payment_id: str, payer_type: str, payer_id: str, status: str, updated_at: int, item: dict[str, Any]
) -> dict[str, Any]:
    money = {"amount": 2000, "amount_formatted": "$20.00", "currency": "USD", "currency_symbol": "$"}
    failed = status == "failed"
    return {
        "id": f"pa_{payment_id.split('_', 1)[-1]}_{updated_at}",
        "payment_id": payment_id,
        "statement_id": None,
        "gateway_external_id": "pi_local",
        "status": status,
        "created_at": updated_at - 1_000,
        "updated_at": updated_at,
        "paid_at": updated_at if status == "paid" else None,
        "failed_at": updated_at if failed else None,
        "failed_reason": {"code": "card_declined", "decline_code": "insufficient_funds"} if failed else None,
        "billing_date": updated_at,
        "charge_type": "checkout",
        "payer": _payer(payer_type, payer_id),
        "totals": {
            "subtotal": money,
            "tax_total": {**money, "amount": 0, "amount_formatted": "$0.00"},
            "grand_total": money,
        },
        "payment_source": {
            "id": "cps_local",
            "gateway": "stripe",
            "gateway_external_id": "pm_local",
            "payment_method": "card",
            "status": "active",
            "card_type": "visa",
            "last4": "4242",
        },
        "subscription_items": [item],
    }

"""Realistic Clerk Billing event bodies for tests: subscriptions, their items, payment attempts, plans.

Shapes follow Clerk's webhook catalog (tests/payloads/subscription*.json, paymentAttempt_updated.json):
every `*_at` in epoch milliseconds, `payer` naming a user or an organization (the other an empty string),
items nested in a subscription with `subscription_id: null`, standalone items naming it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from clerk_events import BASE_MS, envelope

_ids = itertools.count(1)
MONTH_MS = 30 * 24 * 3600 * 1000


def new_id(prefix: str) -> str:
    """A fresh Clerk-style billing id (`csub_…`, `csub_item_…`, `cpa_…`), unique within the test run."""
    return f"{prefix}_btest{next(_ids):07d}"


def plan_id(slug: str) -> str:
    """The plan id the tests use for a slug (stable, so plans and items agree)."""
    return f"cplan_{slug}"


def payer(payer_type: str, payer_id: str, *, clerk_payer_id: str | None = None) -> dict[str, Any]:
    """Clerk's `commerce_payer`: the user or the organization that pays (personal data included, as Clerk sends)."""
    is_user = payer_type == "user"
    return {
        "object": "commerce_payer",
        "id": clerk_payer_id or f"cpayer_{payer_id}",
        "user_id": payer_id if is_user else "",
        "first_name": "Grace" if is_user else "",
        "last_name": "Hopper" if is_user else "",
        "email": "grace.hopper@example.com" if is_user else "billing@acme.example.com",
        "organization_id": "" if is_user else payer_id,
        "organization_name": "" if is_user else "Acme",
        "image_url": "https://img.clerk.com/xxxxxx",
        "created_at": BASE_MS - 60_000,
        "updated_at": BASE_MS - 60_000,
    }


def plan(slug: str, *, amount: int = 2000, name: str | None = None) -> dict[str, Any]:
    """An item's `plan` as webhooks nest it."""
    return {
        "id": plan_id(slug),
        "slug": slug,
        "name": name or slug.replace("-", " ").title(),
        "is_recurring": amount > 0,
        "amount": amount,
        "currency": "USD",
    }


def item_data(
    item_id: str,
    slug: str,
    *,
    status: str = "active",
    updated_at: int = BASE_MS,
    is_free_trial: bool = False,
    seats: int | None = None,
    interval: str = "month",
    canceled_at: int | None = None,
    past_due_at: int | None = None,
    ended_at: int | None = None,
    amount: int = 2000,
    **extra: Any,
) -> dict[str, Any]:
    """A subscription item as a subscription event nests it (`subscription_id: null`)."""
    data: dict[str, Any] = {
        "object": "commerce_subscription_item",
        "id": item_id,
        "status": status,
        "is_free_trial": is_free_trial,
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
        "period_start": BASE_MS - 60_000,
        "period_end": None if status == "ended" else BASE_MS - 60_000 + MONTH_MS,
        "interval": interval,
        "plan_id": plan_id(slug),
        "plan": plan(slug, amount=amount),
        "canceled_at": canceled_at,
        "past_due_at": past_due_at,
        "ended_at": ended_at,
        "subscription_id": None,
    }
    if seats is not None:
        data["seats"] = {"quantity": seats}
    data.update(extra)
    return data


def standalone_item(item: dict[str, Any], subscription_id: str, payer_type: str, payer_id: str) -> dict[str, Any]:
    """The same item as a `subscriptionItem.*` event carries it: naming its subscription and payer."""
    return {
        **item,
        "object": "subscription_item",
        "subscription_id": subscription_id,
        "payer": payer(payer_type, payer_id),
    }


def subscription_data(
    subscription_id: str,
    payer_type: str,
    payer_id: str,
    items: list[dict[str, Any]] | None,
    *,
    status: str = "active",
    updated_at: int = BASE_MS,
    past_due_at: int | None = None,
    latest_payment_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `commerce_subscription` with its items nested (None: the `items` field left out)."""
    data: dict[str, Any] = {
        "object": "commerce_subscription",
        "id": subscription_id,
        "status": status,
        "active_at": BASE_MS - 60_000,
        "canceled_at": None,
        "created_at": BASE_MS - 60_000,
        "ended_at": None,
        "past_due_at": past_due_at,
        "updated_at": updated_at,
        "latest_payment_id": latest_payment_id,
        "payer_id": f"cpayer_{payer_id}",
        "payer": payer(payer_type, payer_id),
        "payment_source_id": "cps_test",
    }
    if items is not None:
        data["items"] = items
    data.update(extra)
    return data


def subscription_event(event_type: str, data: dict[str, Any]) -> str:
    """A `subscription.*` body."""
    return json.dumps(envelope(event_type, data))


def item_event(event_type: str, item: dict[str, Any], subscription_id: str, payer_type: str, payer_id: str) -> str:
    """A `subscriptionItem.*` body for `item` (built by item_data)."""
    return json.dumps(envelope(event_type, standalone_item(item, subscription_id, payer_type, payer_id)))


def payment_data(
    payment_id: str,
    payer_type: str,
    payer_id: str,
    *,
    status: str = "paid",
    updated_at: int = BASE_MS,
    attempt_id: str | None = None,
    item_id: str = "csub_item_paid",
    slug: str = "pro",
    **extra: Any,
) -> dict[str, Any]:
    """A payment attempt as `paymentAttempt.*` carries it, card and gateway ids included (as Clerk sends)."""
    failed = status == "failed"
    money = {"amount": 2000, "amount_formatted": "$20.00", "currency": "USD", "currency_symbol": "$"}
    data: dict[str, Any] = {
        "id": attempt_id or new_id("pa"),
        "instance_id": "ins_test",
        "payment_id": payment_id,
        "statement_id": "stmt_test",
        "gateway_external_id": "pi_secret_gateway_id",
        "status": status,
        "created_at": BASE_MS - 1_000,
        "updated_at": updated_at,
        "paid_at": updated_at if status == "paid" else None,
        "failed_at": updated_at if failed else None,
        "failed_reason": {"code": "card_declined", "decline_code": "insufficient_funds"} if failed else None,
        "billing_date": BASE_MS,
        "charge_type": "recurring",
        "payee": {
            "id": "cpayee_test",
            "gateway_type": "stripe",
            "gateway_external_id": "acct_x",
            "gateway_status": "a",
        },
        "payer": payer(payer_type, payer_id),
        "totals": {"subtotal": money, "tax_total": {**money, "amount": 0}, "grand_total": money},
        "payment_source": {
            "id": "cps_test",
            "gateway": "stripe",
            "gateway_external_id": "pm_secret_card_token",
            "gateway_external_account_id": "acct_x",
            "payment_method": "card",
            "status": "active",
            "card_type": "visa",
            "last4": "4242",
        },
        "subscription_items": [
            {**item_data(item_id, slug), "plan_period": "month", "lifetime_paid": 10000, "subscription_id": None}
        ],
    }
    data.update(extra)
    return data


def payment_event(event_type: str, data: dict[str, Any]) -> str:
    """A `paymentAttempt.*` body."""
    return json.dumps(envelope(event_type, data))


def plan_document(slug: str, features: list[str], *, payer_type: str = "user") -> dict[str, Any]:
    """A plan as backfill copies it into billing_plans (only what the webhook reads matters here)."""
    return {
        "plan_id": plan_id(slug),
        "slug": slug,
        "name": slug.title(),
        "for_payer_type": payer_type,
        "features": features,
    }

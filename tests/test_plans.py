"""Plans copied from the Backend API, features brought to the stored items, and the Backend API's own
view of a subscription parsed to the same versions as the webhook's (what reconcile and backfill use).

Bodies follow Clerk's Backend API spec (bapi/2026-05-12: CommercePlan, CommerceSubscription): plans
carry `fee` objects and `features[]`; a subscription names no `payer` and lists `subscription_items`
with `plan_period`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from billing_events import item_data, item_event, new_id, subscription_data, subscription_event
from clerk_events import BASE_MS, new_message_id, new_user_id
from conftest import PATHS, apply_event, snapshot_all
from google.cloud import firestore

from clerk_sync import billing, events, kind, plans, subscriptions
from clerk_sync.outcome import Outcome
from clerk_sync.payload import MalformedEvent


def money(amount: int) -> dict[str, Any]:
    return {"amount": amount, "amount_formatted": f"${amount / 100:.2f}", "currency": "USD", "currency_symbol": "$"}


def clerk_plan(slug: str, features: list[str], *, amount: int = 2000, payer_type: str = "user") -> dict[str, Any]:
    """A plan as `GET /billing/plans` lists it."""
    return {
        "object": "commerce_plan",
        "id": f"cplan_{slug}",
        "name": slug.title(),
        "fee": money(amount),
        "annual_monthly_fee": money(amount * 10 // 12),
        "annual_fee": money(amount * 10),
        "description": f"The {slug} plan",
        "product_id": "cprod_x",
        "is_default": amount == 0,
        "is_recurring": amount > 0,
        "publicly_visible": True,
        "has_base_fee": amount > 0,
        "for_payer_type": payer_type,
        "slug": slug,
        "avatar_url": None,
        "features": [
            {
                "object": "feature",
                "id": f"feat_{name}",
                "name": name.title(),
                "slug": name,
                "description": None,
                "avatar_url": None,
            }
            for name in features
        ],
        "free_trial_enabled": slug == "pro",
        "free_trial_days": 14 if slug == "pro" else None,
    }


def backend_item(item: dict[str, Any]) -> dict[str, Any]:
    """A webhook's nested item as the Backend API's CommerceSubscriptionItem says the same state."""
    plan = item["plan"]
    backend = {
        key: value for key, value in item.items() if key not in {"interval", "plan", "subscription_id", "object"}
    }
    return {
        **backend,
        "object": "commerce_subscription_item",
        "instance_id": "ins_x",
        "plan_period": item["interval"],
        "price_id": "cprice_x",
        "payer_id": "cpayer_x",
        "lifetime_paid": money(0),
        "plan": {**clerk_plan(plan["slug"], [], amount=plan["amount"]), "is_recurring": plan["is_recurring"]},
    }


def backend_subscription(data: dict[str, Any]) -> dict[str, Any]:
    """A webhook's subscription as the Backend API answers it: no payer object, no canceled/ended times."""
    return {
        "object": "commerce_subscription",
        "id": data["id"],
        "instance_id": "ins_x",
        "status": data["status"],
        "payer_id": data["payer_id"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
        "active_at": data["active_at"],
        "past_due_at": data["past_due_at"],
        "subscription_items": [backend_item(item) for item in data["items"]],
        "eligible_for_free_trial": False,
    }


def stored_subscription(db: firestore.Client, user_id: str) -> dict[str, Any] | None:
    path = f"{billing.billing_collection(PATHS, 'user', user_id)}/{billing.SUBSCRIPTION}"
    return db.document(path).get(timeout=10).to_dict()


def test_a_clerk_plan_becomes_the_documented_plan_document() -> None:
    plan_id, document = plans.plan_document(clerk_plan("pro", ["export", "api"]))

    assert plan_id == "cplan_pro"
    assert document == {
        "plan_id": "cplan_pro",
        "slug": "pro",
        "name": "Pro",
        "description": "The pro plan",
        "for_payer_type": "user",
        "is_default": False,
        "is_recurring": True,
        "publicly_visible": True,
        "fee": {"amount": 2000, "amount_formatted": "$20.00", "currency": "USD"},
        "annual_fee": {"amount": 20000, "amount_formatted": "$200.00", "currency": "USD"},
        "annual_monthly_fee": {"amount": 1666, "amount_formatted": "$16.66", "currency": "USD"},
        "free_trial_enabled": True,
        "free_trial_days": 14,
        "features": ["export", "api"],
        "feature_details": [
            {"slug": "export", "name": "Export", "description": None},
            {"slug": "api", "name": "Api", "description": None},
        ],
    }
    assert set(document) == set(plans.PLAN_FIELDS)


@pytest.mark.parametrize(
    "change",
    [{"id": "cplan/1"}, {"id": None}, {"features": "export"}, {"features": [{"name": "no slug"}]}, {"fee": 20}],
    ids=["id_with_slash", "no_id", "features_not_a_list", "feature_without_slug", "fee_not_an_object"],
)
def test_an_unusable_plan_is_refused_and_nothing_is_copied(db: firestore.Client, change: dict[str, Any]) -> None:
    listed = [clerk_plan("free", [], amount=0), {**clerk_plan("pro", ["export"]), **change}]

    with pytest.raises(MalformedEvent):
        plans.copy_plans(db, PATHS, listed, timeout=10)

    assert snapshot_all(db) == {}


def test_copying_makes_the_plans_clerks_list_and_a_second_copy_writes_nothing(db: firestore.Client) -> None:
    db.collection(PATHS.billing_plans).document("cplan_retired").set({"plan_id": "cplan_retired"}, timeout=10)
    listed = [clerk_plan("free", [], amount=0), clerk_plan("pro", ["export"])]

    first = plans.copy_plans(db, PATHS, listed, timeout=10)
    second = plans.copy_plans(db, PATHS, listed, timeout=10)
    changed = plans.copy_plans(db, PATHS, [listed[0], clerk_plan("pro", ["export", "api"])], timeout=10)

    stored = {
        snapshot.id: snapshot.to_dict() or {} for snapshot in db.collection(PATHS.billing_plans).stream(timeout=10)
    }
    assert (first, second, changed) == (
        plans.Copied(added=2, changed=0, removed=1, unchanged=0),
        plans.Copied(added=0, changed=0, removed=0, unchanged=2),
        plans.Copied(added=0, changed=1, removed=0, unchanged=1),
    )
    assert set(stored) == {"cplan_free", "cplan_pro"}
    assert stored["cplan_pro"]["features"] == ["export", "api"]


def test_refreshing_features_brings_copied_plans_to_items_written_before(db: firestore.Client) -> None:
    user_id, subscription_id, item_id = new_user_id(), new_id("csub"), new_id("csub_item")
    data = subscription_data(subscription_id, "user", user_id, [item_data(item_id, "pro")])
    apply_event(db, new_message_id(), events.parse_event(subscription_event("subscription.created", data).encode()))
    before = stored_subscription(db, user_id)

    plans.copy_plans(db, PATHS, [clerk_plan("pro", ["export"])], timeout=10)
    first = plans.refresh_features(db, PATHS, timeout=10)
    plans.copy_plans(db, PATHS, [clerk_plan("pro", ["export", "api"])], timeout=10)
    second = plans.refresh_features(db, PATHS, timeout=10)
    again = plans.refresh_features(db, PATHS, timeout=10)

    after = stored_subscription(db, user_id)
    assert before is not None
    assert after is not None
    assert (before["items"][item_id]["features"], before["active_features"]) == (None, [])
    assert (first, second, again) == (1, 1, 0)
    assert (after["items"][item_id]["features"], after["active_features"]) == (["export", "api"], ["api", "export"])
    assert after["sync_digest"] == before["sync_digest"]  # features are derived: not Clerk's versions


def test_the_backend_apis_subscription_parses_to_the_webhooks_versions(db: firestore.Client) -> None:
    user_id, subscription_id = new_user_id(), new_id("csub")
    items = [
        item_data(new_id("csub_item"), "free", status="ended", amount=0, updated_at=BASE_MS + 1, ended_at=BASE_MS + 1),
        item_data(new_id("csub_item"), "pro", is_free_trial=True, updated_at=BASE_MS + 2, seats=3),
    ]
    data = subscription_data(subscription_id, "user", user_id, items, updated_at=BASE_MS + 2, latest_payment_id="cpa_1")
    webhook = events.parse_event(subscription_event("subscription.updated", data).encode())
    backend = subscriptions.parse_backend_subscription(
        "user", user_id, json.loads(json.dumps(backend_subscription(data)))
    )
    assert isinstance(webhook, kind.Upsert)

    applied = apply_event(db, new_message_id(), webhook)
    stored = stored_subscription(db, user_id)
    again = apply_event(db, new_message_id(), backend)

    assert (backend.digest, backend.updated_at) == (webhook.digest, webhook.updated_at)
    assert backend.document[subscriptions.PART_DIGEST] == webhook.document[subscriptions.PART_DIGEST]
    assert (applied, again) == (Outcome.APPLIED, Outcome.STALE)  # reconcile finds it in sync
    assert stored_subscription(db, user_id) == stored
    assert stored is not None
    assert stored["latest_payment_id"] == "cpa_1"


def test_the_backend_apis_subscription_repairs_a_missed_item(db: firestore.Client) -> None:
    user_id, subscription_id = new_user_id(), new_id("csub")
    free = item_data(new_id("csub_item"), "free", amount=0, updated_at=BASE_MS + 1)
    pro = item_data(new_id("csub_item"), "pro", updated_at=BASE_MS + 3)
    listed_free = subscription_data(subscription_id, "user", user_id, [free], updated_at=BASE_MS + 1)
    apply_event(
        db, new_message_id(), events.parse_event(subscription_event("subscription.created", listed_free).encode())
    )
    # The pro item's own event was lost; Clerk's subscription now lists both.
    now = subscription_data(subscription_id, "user", user_id, [free, pro], updated_at=BASE_MS + 3)

    repaired = apply_event(
        db, new_message_id(), subscriptions.parse_backend_subscription("user", user_id, backend_subscription(now))
    )
    late = apply_event(
        db,
        new_message_id(),
        events.parse_event(item_event("subscriptionItem.active", pro, subscription_id, "user", user_id).encode()),
    )

    stored = stored_subscription(db, user_id)
    assert (repaired, late) == (Outcome.APPLIED, Outcome.STALE)
    assert stored is not None
    assert stored["active_plans"] == ["free", "pro"]
    assert stored["items"][pro["id"]]["plan"]["amount"] == 2000  # from the Backend API's fee

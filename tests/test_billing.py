"""Clerk Billing in Firestore: a payer's subscription, its items each in its own order, payments, and the payer's end.

Events are parsed by the function's parser and applied by `events.apply_event` against the emulator;
bodies that must be refused go through the real functions-framework app.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from billing_events import (
    item_data,
    item_event,
    new_id,
    payment_data,
    payment_event,
    plan_document,
    plan_id,
    subscription_data,
    subscription_event,
)
from clerk_events import (
    BASE_MS,
    deletion_event,
    envelope,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_deletion_event,
    signed_headers,
)
from conftest import PATHS, apply_event, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import billing, events, payload, payments, subscriptions, versions
from clerk_sync.outcome import Outcome

PAYLOADS = Path(__file__).with_name("payloads")
EPOCH = payload.EPOCH


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def deliver(db: firestore.Client, body: str, message_id: str | None = None) -> Outcome:
    """Parse a body as the function does and apply it."""
    event = events.parse_event(body.encode())
    assert not isinstance(event, events.IgnoredEvent), body[:80]
    return apply_event(db, message_id or new_message_id(), event)


def subscription_path(payer_type: str, payer_id: str) -> str:
    return f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"


def subscription_of(db: firestore.Client, payer_type: str, payer_id: str) -> dict[str, Any] | None:
    return db.document(subscription_path(payer_type, payer_id)).get(timeout=10).to_dict()


def payment_of(db: firestore.Client, payer_type: str, payer_id: str, payment_id: str) -> dict[str, Any] | None:
    path = f"{billing.payments_collection(PATHS, payer_type, payer_id)}/{payment_id}"
    return db.document(path).get(timeout=10).to_dict()


def statuses(document: dict[str, Any] | None) -> dict[str, tuple[str, datetime]]:
    """Each stored item's status and version."""
    assert document is not None
    return {item_id: (entry["status"], entry["updated_at"]) for item_id, entry in document["items"].items()}


class Payer:
    """A user payer with a subscription id and two item ids, fresh per test."""

    def __init__(self, payer_type: str = "user") -> None:
        self.type = payer_type
        self.id = new_user_id() if payer_type == "user" else new_organization_id()
        self.subscription_id = new_id("csub")
        self.free = new_id("csub_item")
        self.pro = new_id("csub_item")

    def subscription(self, event_type: str, items: list[dict[str, Any]] | None, **fields: Any) -> str:
        data = subscription_data(self.subscription_id, self.type, self.id, items, **fields)
        return subscription_event(event_type, data)

    def item(self, event_type: str, item: dict[str, Any]) -> str:
        return item_event(event_type, item, self.subscription_id, self.type, self.id)

    def stored(self, db: firestore.Client) -> dict[str, Any] | None:
        return subscription_of(db, self.type, self.id)


# --- the subscription document ---------------------------------------------------------------


def test_clerks_example_subscription_is_stored_under_its_user_payer_with_its_plan_active(db: firestore.Client) -> None:
    body = (PAYLOADS / "subscription_updated.json").read_text()
    data = json.loads(body)["data"]

    outcome = deliver(db, body)

    stored = subscription_of(db, "user", data["payer"]["user_id"])
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (stored["subscription_id"], stored["status"], stored["payer_type"]) == (data["id"], "active", "user")
    assert (stored["payer_id"], stored["clerk_payer_id"]) == (data["payer"]["user_id"], data["payer_id"])
    assert stored["updated_at"] == at(data["updated_at"])
    assert stored["latest_payment_id"] == data["latest_payment_id"]
    (item,) = data["items"]
    entry = stored["items"][item["id"]]
    assert entry["plan"] == {
        "id": item["plan_id"],
        "slug": "pro-plan",
        "name": "Pro Plan",
        "amount": 2000,
        "currency": "USD",
        "is_recurring": True,
    }
    assert (entry["status"], entry["interval"], entry["is_free_trial"], entry["seats"]) == (
        "active",
        "month",
        False,
        None,
    )
    assert (entry["period_start"], entry["period_end"]) == (at(item["period_start"]), at(item["period_end"]))
    assert entry["features"] is None  # the plan was never copied: no features known
    assert (stored["active_plans"], stored["active_features"]) == (["pro-plan"], [])
    assert stored["sync_digest"] == subscriptions.whole_digest(stored)
    assert set(stored) == set(subscriptions.OWNED_FIELDS)


@pytest.mark.parametrize(
    "name", ["subscriptionItem_active", "subscriptionItem_canceled", "subscriptionItem_freeTrialEnding"]
)
def test_clerks_example_item_events_are_stored_as_the_payers_one_item(db: firestore.Client, name: str) -> None:
    data = json.loads((PAYLOADS / f"{name}.json").read_text())["data"]

    outcome = deliver(db, (PAYLOADS / f"{name}.json").read_text())

    stored = subscription_of(db, "user", data["payer"]["user_id"])
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert stored["subscription_id"] == data["subscription_id"]
    assert stored["status"] is None  # the subscription's own fields wait for a subscription event
    assert stored["updated_at"] is None
    assert list(stored["items"]) == [data["id"]]
    entry = stored["items"][data["id"]]
    assert (entry["status"], entry["is_free_trial"]) == (data["status"], data["is_free_trial"])
    assert entry["seats"] == (data.get("seats") or {}).get("quantity")
    assert stored["active_plans"] == [data["plan"]["slug"]]  # active, canceled (until it ends) and trials grant


def test_nothing_personal_of_the_payer_or_the_card_is_stored(db: firestore.Client) -> None:
    payer = Payer()
    deliver(db, payer.subscription("subscription.created", [item_data(payer.pro, "pro")]))
    deliver(db, payment_event("paymentAttempt.created", payment_data(new_id("cpa"), "user", payer.id)))

    everything = repr(snapshot_all(db))

    for secret in ("grace.hopper@example.com", "Grace", "Hopper", "pm_secret_card_token", "pi_secret_gateway_id"):
        assert secret not in everything


def test_an_item_event_older_than_the_item_nested_in_the_subscription_is_stale(db: firestore.Client) -> None:
    payer = Payer()
    newer = item_data(payer.pro, "pro", status="past_due", updated_at=BASE_MS + 20)
    older = item_data(payer.pro, "pro", status="active", updated_at=BASE_MS + 10)

    first = deliver(db, payer.subscription("subscription.pastDue", [newer], status="past_due", updated_at=BASE_MS + 20))
    late = deliver(db, payer.item("subscriptionItem.active", older))

    assert (first, late) == (Outcome.APPLIED, Outcome.STALE)
    assert statuses(payer.stored(db)) == {payer.pro: ("past_due", at(BASE_MS + 20))}


def test_an_item_nested_in_a_late_subscription_event_does_not_undo_a_newer_item_event(db: firestore.Client) -> None:
    payer = Payer()
    newer = item_data(payer.pro, "pro", status="canceled", updated_at=BASE_MS + 20, canceled_at=BASE_MS + 20)
    older = item_data(payer.pro, "pro", status="active", updated_at=BASE_MS + 10)

    first = deliver(db, payer.item("subscriptionItem.canceled", newer))
    late = deliver(db, payer.subscription("subscription.updated", [older], updated_at=BASE_MS + 10))

    stored = payer.stored(db)
    assert (first, late) == (Outcome.APPLIED, Outcome.APPLIED)  # the subscription's own fields were new
    assert stored is not None
    assert stored["status"] == "active"
    assert statuses(stored) == {payer.pro: ("canceled", at(BASE_MS + 20))}
    assert stored["items"][payer.pro]["canceled_at"] == at(BASE_MS + 20)


def test_an_item_event_changes_its_item_only(db: firestore.Client) -> None:
    payer = Payer()
    free = item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 1)
    pro = item_data(payer.pro, "pro", updated_at=BASE_MS + 1)
    deliver(db, payer.subscription("subscription.created", [free, pro], updated_at=BASE_MS + 1))
    before = payer.stored(db)

    renewed = deliver(
        db, payer.item("subscriptionItem.updated", {**pro, "updated_at": BASE_MS + 5, "seats": {"quantity": 3}})
    )

    after = payer.stored(db)
    assert renewed is Outcome.APPLIED
    assert before is not None
    assert after is not None
    assert after["items"][payer.free] == before["items"][payer.free]
    assert after["items"][payer.pro]["seats"] == 3
    assert {name: after[name] for name in subscriptions.SUBSCRIPTION_FIELDS} == {
        name: before[name] for name in subscriptions.SUBSCRIPTION_FIELDS
    }
    assert after["sync_digest"] != before["sync_digest"]


def test_the_newest_item_list_drops_an_item_it_leaves_out_unless_it_changed_after(db: firestore.Client) -> None:
    payer = Payer()
    trial = new_id("csub_item")
    free = item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 1)
    pro = item_data(payer.pro, "pro", status="upcoming", updated_at=BASE_MS + 1)
    deliver(db, payer.subscription("subscription.created", [free, pro], updated_at=BASE_MS + 1))
    # A trial item arrives on its own, changed after the list below was made.
    deliver(
        db, payer.item("subscriptionItem.active", item_data(trial, "team", is_free_trial=True, updated_at=BASE_MS + 9))
    )

    listed = deliver(db, payer.subscription("subscription.updated", [free], updated_at=BASE_MS + 5))

    assert listed is Outcome.APPLIED
    assert set(statuses(payer.stored(db))) == {payer.free, trial}


def test_an_item_a_newer_list_left_out_does_not_come_back_with_an_older_item_event(db: firestore.Client) -> None:
    payer = Payer()
    free = item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 1)
    deliver(db, payer.subscription("subscription.updated", [free], updated_at=BASE_MS + 5))

    older = deliver(
        db,
        payer.item(
            "subscriptionItem.abandoned", item_data(payer.pro, "pro", status="abandoned", updated_at=BASE_MS + 4)
        ),
    )
    newer = deliver(db, payer.item("subscriptionItem.active", item_data(payer.pro, "pro", updated_at=BASE_MS + 6)))

    assert (older, newer) == (Outcome.STALE, Outcome.APPLIED)
    assert statuses(payer.stored(db)) == {
        payer.free: ("active", at(BASE_MS + 1)),
        payer.pro: ("active", at(BASE_MS + 6)),
    }


def test_an_older_subscription_event_changes_neither_the_subscription_nor_its_list(db: firestore.Client) -> None:
    payer = Payer()
    free = item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 1)
    pro = item_data(payer.pro, "pro", updated_at=BASE_MS + 8)
    deliver(db, payer.subscription("subscription.updated", [free, pro], updated_at=BASE_MS + 8))
    before = payer.stored(db)

    late = deliver(db, payer.subscription("subscription.created", [free], status="incomplete", updated_at=BASE_MS + 2))

    assert late is Outcome.STALE
    assert payer.stored(db) == before


@pytest.mark.parametrize("first_is_a", [True, False])
def test_two_versions_of_an_item_with_one_updated_at_end_in_the_larger_digest(
    db: firestore.Client, first_is_a: bool
) -> None:
    payer = Payer()
    version_a = item_data(payer.pro, "pro", status="active", updated_at=BASE_MS + 3)
    version_b = item_data(payer.pro, "pro", status="past_due", updated_at=BASE_MS + 3, past_due_at=BASE_MS + 3)
    digests = {
        "active": subscriptions.item_entry(version_a, "a")[1][versions.DIGEST_FIELD],
        "past_due": subscriptions.item_entry(version_b, "b")[1][versions.DIGEST_FIELD],
    }
    winner = max(digests, key=lambda status: digests[status])
    first, second = (version_a, version_b) if first_is_a else (version_b, version_a)

    deliver(db, payer.item("subscriptionItem.updated", first))
    deliver(db, payer.subscription("subscription.updated", [second], updated_at=BASE_MS + 3))

    assert statuses(payer.stored(db))[payer.pro][0] == winner


def test_a_duplicate_delivery_changes_nothing(db: firestore.Client) -> None:
    payer = Payer()
    body = payer.item("subscriptionItem.active", item_data(payer.pro, "pro", updated_at=BASE_MS + 2))
    message_id = new_message_id()
    first = deliver(db, body, message_id)
    before = snapshot_all(db)

    again = deliver(db, body, message_id)

    assert (first, again) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert snapshot_all(db) == before


# --- which items grant access -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "is_free_trial", "grants"),
    [
        ("active", False, True),
        ("active", True, True),
        ("past_due", False, True),
        ("canceled", False, True),
        ("ended", False, False),
        ("upcoming", False, False),
        ("incomplete", False, False),
        ("abandoned", False, False),
        ("expired", False, False),
        (None, False, False),
    ],
)
def test_active_plans_hold_the_items_whose_status_grants_access(
    db: firestore.Client, status: str | None, is_free_trial: bool, grants: bool
) -> None:
    payer = Payer()
    item = item_data(payer.pro, "pro", status=status, is_free_trial=is_free_trial)  # type: ignore[arg-type]

    deliver(db, payer.subscription("subscription.updated", [item]))

    stored = payer.stored(db)
    assert stored is not None
    assert stored["active_plans"] == (["pro"] if grants else [])


def test_an_upgrade_moves_active_plans_and_features_from_free_to_pro(db: firestore.Client) -> None:
    db.collection(PATHS.billing_plans).document(plan_id("free")).set(plan_document("free", ["basic"]), timeout=10)
    db.collection(PATHS.billing_plans).document(plan_id("pro")).set(
        plan_document("pro", ["basic", "export"]), timeout=10
    )
    payer = Payer()
    free = item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 1)
    deliver(db, payer.subscription("subscription.created", [free], updated_at=BASE_MS + 1))
    on_free = payer.stored(db)

    deliver(db, payer.item("subscriptionItem.active", item_data(payer.pro, "pro", updated_at=BASE_MS + 5)))
    deliver(
        db,
        payer.item(
            "subscriptionItem.ended", item_data(payer.free, "free", status="ended", amount=0, updated_at=BASE_MS + 5)
        ),
    )

    on_pro = payer.stored(db)
    assert on_free is not None
    assert on_pro is not None
    assert (on_free["active_plans"], on_free["active_features"]) == (["free"], ["basic"])
    assert (on_pro["active_plans"], on_pro["active_features"]) == (["pro"], ["basic", "export"])
    assert on_pro["items"][payer.pro]["features"] == ["basic", "export"]


def test_a_downgrade_at_period_end_keeps_pro_while_canceled_and_drops_it_when_ended(db: firestore.Client) -> None:
    payer = Payer()
    pro = item_data(payer.pro, "pro", updated_at=BASE_MS + 1)
    deliver(db, payer.subscription("subscription.created", [pro], updated_at=BASE_MS + 1))

    deliver(db, payer.item("subscriptionItem.canceled", {**pro, "status": "canceled", "updated_at": BASE_MS + 2}))
    deliver(
        db,
        payer.item(
            "subscriptionItem.upcoming",
            item_data(payer.free, "free", status="upcoming", amount=0, updated_at=BASE_MS + 2),
        ),
    )
    canceled = payer.stored(db)
    deliver(db, payer.item("subscriptionItem.ended", {**pro, "status": "ended", "updated_at": BASE_MS + 3}))
    deliver(db, payer.item("subscriptionItem.active", item_data(payer.free, "free", amount=0, updated_at=BASE_MS + 3)))

    assert canceled is not None
    assert canceled["active_plans"] == ["pro"]
    stored = payer.stored(db)
    assert stored is not None
    assert stored["active_plans"] == ["free"]


# --- the payer's deletion, the app's own fields ------------------------------------------------------


@pytest.mark.parametrize("payer_type", ["user", "organization"])
def test_a_deleted_payers_billing_is_swept_and_never_comes_back(db: firestore.Client, payer_type: str) -> None:
    payer = Payer(payer_type)
    payment_id = new_id("cpa")
    deliver(db, payer.subscription("subscription.created", [item_data(payer.pro, "pro", updated_at=BASE_MS + 1)]))
    deliver(db, payment_event("paymentAttempt.created", payment_data(payment_id, payer_type, payer.id)))
    assert payer.stored(db) is not None
    assert payment_of(db, payer_type, payer.id, payment_id) is not None

    deletion = deletion_event(payer.id) if payer_type == "user" else organization_deletion_event(payer.id)
    deleted = deliver(db, deletion)
    late_item = deliver(
        db, payer.item("subscriptionItem.ended", item_data(payer.pro, "pro", status="ended", updated_at=BASE_MS + 9))
    )
    late_subscription = deliver(db, payer.subscription("subscription.updated", [], updated_at=BASE_MS + 9))
    late_payment = deliver(
        db,
        payment_event("paymentAttempt.updated", payment_data(payment_id, payer_type, payer.id, updated_at=BASE_MS + 9)),
    )

    assert deleted is Outcome.APPLIED
    assert (late_item, late_subscription, late_payment) == (Outcome.STALE,) * 3
    assert payer.stored(db) is None
    assert payment_of(db, payer_type, payer.id, payment_id) is None
    assert [path for path in snapshot_all(db) if f"/{billing.BILLING}/" in path] == []


def test_the_apps_own_fields_in_the_subscription_document_survive_every_event(db: firestore.Client) -> None:
    payer = Payer()
    path = subscription_path("user", payer.id)
    db.document(path).set({"seats_used": 2, "items": "not the sync's"}, timeout=10)

    deliver(db, payer.item("subscriptionItem.active", item_data(payer.pro, "pro", updated_at=BASE_MS + 1)))
    deliver(db, payer.subscription("subscription.updated", [item_data(payer.pro, "pro", updated_at=BASE_MS + 1)]))

    stored = db.document(path).get(timeout=10).to_dict()
    assert stored is not None
    assert stored["seats_used"] == 2
    assert list(stored["items"]) == [payer.pro]


# --- payments ---------------------------------------------------------------------------------------


def test_clerks_example_payment_keeps_the_card_brand_and_last_4_only(db: firestore.Client) -> None:
    body = (PAYLOADS / "paymentAttempt_updated.json").read_text()
    data = json.loads(body)["data"]

    outcome = deliver(db, body)

    stored = payment_of(db, "user", data["payer"]["user_id"], data["payment_id"])
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert set(stored) == set(payments.OWNED_FIELDS)
    assert stored["payment_source"] == {"payment_method": "card", "card_type": "visa", "last4": "4242"}
    assert (stored["status"], stored["charge_type"], stored["attempt_id"]) == ("paid", "recurring", data["id"])
    assert stored["totals"]["grand_total"] == {"amount": 2200, "amount_formatted": "$22.00", "currency": "USD"}
    assert stored["subscription_items"] == [
        {
            "id": "csub_item_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            "plan_id": "cplan_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            "plan_slug": "pro-plan",
            "plan_name": "Pro Plan",
            "interval": "month",
        }
    ]
    assert "gateway" not in repr(stored)


@pytest.mark.parametrize("payer_type", ["user", "organization"])
def test_a_payments_newest_attempt_wins_in_either_order(db: firestore.Client, payer_type: str) -> None:
    payer_id = new_user_id() if payer_type == "user" else new_organization_id()
    payment_id = new_id("cpa")
    failed = payment_data(payment_id, payer_type, payer_id, status="failed", updated_at=BASE_MS + 1)
    retried = payment_data(payment_id, payer_type, payer_id, status="paid", updated_at=BASE_MS + 2)

    outcomes = [
        deliver(db, payment_event("paymentAttempt.updated", retried)),
        deliver(db, payment_event("paymentAttempt.updated", failed)),
    ]

    stored = payment_of(db, payer_type, payer_id, payment_id)
    assert outcomes == [Outcome.APPLIED, Outcome.STALE]
    assert stored is not None
    assert (stored["status"], stored["attempt_id"], stored["failed_reason"]) == ("paid", retried["id"], None)
    assert (stored["payer_type"], stored["payer_id"]) == (payer_type, payer_id)


# --- through the function: refused, ignored ------------------------------------------------------


def post(client: FlaskClient, body: str) -> tuple[int, str]:
    response = client.post("/", data=body, headers=signed_headers(body))
    return response.status_code, response.get_json()["outcome"]


def _seeded(client: FlaskClient) -> Payer:
    payer = Payer()
    assert post(client, payer.subscription("subscription.created", [item_data(payer.pro, "pro")])) == (200, "applied")
    return payer


def _malformed_bodies(payer: Payer) -> dict[str, str]:
    newer = BASE_MS + 10**6
    item = item_data(payer.pro, "pro", updated_at=newer)
    standalone = json.loads(payer.item("subscriptionItem.updated", item))
    subscription = json.loads(payer.subscription("subscription.updated", [item], updated_at=newer))
    payment = json.loads(payment_event("paymentAttempt.updated", payment_data(new_id("cpa"), "user", payer.id)))
    cases: dict[str, tuple[dict[str, Any], str, object]] = {
        "payer missing": (subscription, "data.payer", None),
        "payer names nobody": (subscription, "data.payer", {"id": "cpayer_x", "user_id": "", "organization_id": ""}),
        "payer id not a Clerk id": (standalone, "data.payer", {"user_id": "user 1/../x"}),
        "items not a list": (subscription, "data.items", {"a": item}),
        "an item not an object": (subscription, "data.items", [item, "csub_item_1"]),
        "an item listed twice": (subscription, "data.items", [item, item]),
        "an item without updated_at": (subscription, "data.items", [{**item, "updated_at": None}]),
        "an item id with a slash": (standalone, "data.id", "csub_item/1"),
        "standalone item without its subscription": (standalone, "data.subscription_id", None),
        "seats not an object": (standalone, "data.seats", 5),
        "a plan id with a slash": (standalone, "data.plan_id", "cplan/1"),
        "plan amount a string": (standalone, "data.plan", {**item["plan"], "amount": "20.00"}),
        "subscription updated_at missing": (subscription, "data.updated_at", None),
        "payment without its payment id": (payment, "data.payment_id", None),
        "payment source a string": (payment, "data.payment_source", "visa 4242"),
        "payment total amount a float": (payment, "data.totals", {"grand_total": {"amount": 20.5}}),
    }
    bodies = {}
    for name, (event, field, value) in cases.items():
        changed = json.loads(json.dumps(event))
        target = changed["data"]
        target[field.split(".", 1)[1]] = value
        bodies[name] = json.dumps(changed)
    return bodies


def test_malformed_billing_bodies_are_400_and_change_nothing(client: FlaskClient, db: firestore.Client) -> None:
    payer = _seeded(client)
    before = snapshot_all(db)

    answers = {name: post(client, body) for name, body in _malformed_bodies(payer).items()}

    assert {name: answer for name, answer in answers.items() if answer != (400, "malformed")} == {}
    assert snapshot_all(db) == before


@pytest.mark.parametrize(
    "event_type", ["subscriptionItem.paused", "subscription.deleted", "paymentAttempt.refunded", "billingPlan.updated"]
)
def test_unknown_billing_types_are_acknowledged_and_change_nothing(
    client: FlaskClient, db: firestore.Client, event_type: str
) -> None:
    payer = _seeded(client)
    before = snapshot_all(db)
    body = json.dumps(envelope(event_type, json.loads(payer.subscription("subscription.updated", []))["data"]))

    assert post(client, body) == (200, "ignored")
    assert snapshot_all(db) == before


@pytest.mark.parametrize("event_type", ["subscription.past_due", "subscriptionItem.past_due"])
def test_the_snake_case_past_due_types_of_clerks_first_billing_webhooks_are_applied(
    client: FlaskClient, db: firestore.Client, event_type: str
) -> None:
    payer = Payer()
    item = item_data(payer.pro, "pro", status="past_due", past_due_at=BASE_MS)
    body = (
        payer.item(event_type, item)
        if event_type.startswith("subscriptionItem")
        else payer.subscription(event_type, [item], status="past_due")
    )

    assert post(client, body) == (200, "applied")
    assert statuses(payer.stored(db))[payer.pro][0] == "past_due"


def test_a_merged_document_that_would_outgrow_firestore_drops_the_oldest_items_that_grant_nothing() -> None:
    entries = {
        f"csub_item_{index}": subscriptions.item_entry(
            item_data(f"csub_item_{index}", f"plan-{index}", status=status, updated_at=BASE_MS + index), "item"
        )[1]
        for index, status in enumerate(["ended", "active", "ended", "abandoned", "past_due", "ended"])
    }
    expected = ["csub_item_1", "csub_item_3", "csub_item_4", "csub_item_5"]  # the two oldest spare ones go
    room = payload.stored_bytes({item_id: entries[item_id] for item_id in expected})

    kept = subscriptions.fit(entries, limit=room)

    assert sorted(kept) == expected
    assert subscriptions.fit(entries, limit=payload.stored_bytes(entries)) == entries

"""Bad billing input never earns a 5xx: hypothesis throws odd but signed Clerk Billing events at the function.

The patterns of tests/test_fuzz.py, for subscriptions, their items and payment attempts, through the
real functions-framework app to the real emulator: a valid but odd event is stored exactly as sent
(and nothing of the payer's person or of the card beyond its brand and last 4); a body of the wrong
shape gets a 400 and changes nothing; a cut-short or too-deep body too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from billing_events import item_data, new_id, payer, payment_data, standalone_item, subscription_data
from clerk_events import BASE_MS, envelope, new_organization_id, new_user_id, signed_headers
from conftest import PATHS, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore
from hypothesis import strategies as st
from test_fuzz import (
    BAD_CLERK_IDS,
    BAD_COUNTS,
    BAD_DATA,
    BAD_IDS,
    BAD_STRINGS,
    BAD_TEXT,
    BAD_TIMES,
    CLERK_IDS,
    EXTRA_FIELDS,
    JSON_VALUES,
    MISSING,
    NOT_AN_OBJECT,
    ODD_TEXTS,
    OPTIONAL,
    QUICK,
    SOAK,
    TEXTS,
    TIMES,
    Baseline,
    assert_rejected_and_unchanged,
    big_text,
    dump,
    millis,
    put,
    run_property,
    same,
    send_signed,
)

from clerk_sync import billing, payments, subscriptions
from clerk_sync.documents import PAYMENT, SUBSCRIPTION

NEWER_MS = BASE_MS + 10**6
PERSONAL = "Personal_sentinel_5e1d"  # the payer's names and email in every body: stored nowhere
CARD = "gateway_sentinel_77aa"  # the card's gateway ids in every payment: stored nowhere
SUBSCRIPTION_TYPES = ("subscription.created", "subscription.updated", "subscription.active", "subscription.pastDue")
ITEM_TYPES = ("subscriptionItem.active", "subscriptionItem.updated", "subscriptionItem.canceled",
              "subscriptionItem.ended", "subscriptionItem.freeTrialEnding", "subscriptionItem.created")  # fmt: skip
PAYMENT_TYPES = ("paymentAttempt.created", "paymentAttempt.updated")
NOT_OBJECTS = [value for value in NOT_AN_OBJECT if value is not MISSING and value is not None]
FLAGS = ["true", 1, 0, [], {}, "yes", 1.5]


def subscription_of(db: firestore.Client, payer_type: str, payer_id: str) -> dict[str, Any] | None:
    path = f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"
    return db.document(path).get(timeout=10).to_dict()


def payment_of(db: firestore.Client, payer_type: str, payer_id: str, payment_id: str) -> dict[str, Any] | None:
    return (
        db.document(f"{billing.payments_collection(PATHS, payer_type, payer_id)}/{payment_id}")
        .get(timeout=10)
        .to_dict()
    )


def personal_payer(payer_type: str, payer_id: str) -> dict[str, Any]:
    return {**payer(payer_type, payer_id), "first_name": PERSONAL, "last_name": PERSONAL, "email": f"{PERSONAL}@x.io"}


# ---------------------------------------------------------------------------------------------
# Odd but valid billing events


@st.composite
def odd_items(draw: st.DrawFn) -> dict[str, Any]:
    """A legal but unusual subscription item (nested form)."""
    item = item_data(draw(CLERK_IDS), "pro", updated_at=draw(TIMES))
    put(item, "status", draw(ODD_TEXTS))
    put(item, "plan_id", draw(OPTIONAL | CLERK_IDS))
    plan = draw(OPTIONAL | st.just(item["plan"]))
    put(item, "plan", plan)
    if isinstance(item.get("plan"), dict):
        for field in ("slug", "name", "currency"):
            put(item["plan"], field, draw(ODD_TEXTS))
        put(item["plan"], "amount", draw(OPTIONAL | st.integers(-(2**63), 2**63 - 1)))
        put(item["plan"], "is_recurring", draw(OPTIONAL | st.booleans()))
        put(item["plan"], "id", draw(OPTIONAL | CLERK_IDS))
        item["plan"].update(draw(EXTRA_FIELDS))
    for field in ("period_start", "period_end", "canceled_at", "past_due_at", "ended_at", "created_at"):
        put(item, field, draw(OPTIONAL | TIMES))
    put(item, "interval", draw(ODD_TEXTS))
    put(item, "is_free_trial", draw(OPTIONAL | st.booleans()))
    put(
        item,
        "seats",
        draw(OPTIONAL | st.builds(lambda quantity: {"quantity": quantity}, OPTIONAL | st.integers(0, 2**63 - 1))),
    )
    if isinstance(item.get("seats"), dict) and item["seats"]["quantity"] is MISSING:
        del item["seats"]["quantity"]
    item.update(draw(EXTRA_FIELDS))
    return item


@st.composite
def odd_billing_events(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any], str]:
    """(kind, payer type, payer id, data, body) of a legal but unusual billing event for a new payer."""
    payer_type = draw(st.sampled_from(["user", "organization"]))
    payer_id = new_user_id() if payer_type == "user" else new_organization_id()
    kind = draw(st.sampled_from(["subscription", "item", "payment"]))
    if kind == "payment":
        data = payment_data(draw(CLERK_IDS), payer_type, payer_id, status=draw(st.sampled_from(["paid", "failed"])),
                            updated_at=draw(TIMES), gateway_external_id=CARD)  # fmt: skip
        data["payment_source"].update(gateway_external_id=CARD, gateway_external_account_id=CARD, id=CARD)
        for field in ("id", "statement_id", "status", "charge_type"):
            put(data, field, draw(ODD_TEXTS))
        for field in ("paid_at", "failed_at", "billing_date", "created_at"):
            put(data, field, draw(OPTIONAL | TIMES))
        put(data, "payment_source", draw(OPTIONAL | st.just(data["payment_source"])))
        put(data, "failed_reason", draw(OPTIONAL | st.builds(lambda code: {"code": code, "decline_code": None}, TEXTS)))
        put(data, "totals", draw(OPTIONAL | st.just(data["totals"])))
        put(
            data,
            "subscription_items",
            draw(OPTIONAL | st.lists(odd_items(), max_size=2, unique_by=lambda item: item["id"])),
        )
        event_type = draw(st.sampled_from(PAYMENT_TYPES))
    elif kind == "item":
        data = standalone_item(draw(odd_items()), draw(CLERK_IDS), payer_type, payer_id)
        event_type = draw(st.sampled_from(ITEM_TYPES))
    else:
        items = draw(OPTIONAL | st.lists(odd_items(), max_size=3, unique_by=lambda item: item["id"]))
        data = subscription_data(draw(CLERK_IDS), payer_type, payer_id, None, status="active",
                                 updated_at=draw(TIMES))  # fmt: skip
        put(data, "items", items)
        for field in ("active_at", "canceled_at", "ended_at", "past_due_at", "created_at"):
            put(data, field, draw(OPTIONAL | TIMES))
        put(data, "latest_payment_id", draw(ODD_TEXTS))
        put(data, "status", draw(ODD_TEXTS))
        event_type = draw(st.sampled_from(SUBSCRIPTION_TYPES))
    data["payer"] = {**personal_payer(payer_type, payer_id), "id": draw(OPTIONAL | st.just(f"cpayer_{payer_id}"))}
    if data["payer"]["id"] is MISSING:
        del data["payer"]["id"]
    text = big_text(draw)
    if text is not None:
        data["zz_big"] = text  # an unstored field: the body is big, the document is not
    data.update(draw(EXTRA_FIELDS))
    body = envelope(event_type, data)
    body["event_attributes"] = draw(JSON_VALUES)
    return kind, payer_type, payer_id, data, dump(body, ascii_only=draw(st.booleans()))


def value(data: dict[str, Any], field: str) -> Any:
    return data.get(field)


def assert_item_stored_as_sent(sent: dict[str, Any], entry: dict[str, Any]) -> None:
    """An item's entry holds what Clerk sent, field by field."""
    assert set(entry) == {*subscriptions.ITEM_FIELDS, "sync_digest", "features"}
    for field in ("status", "interval"):
        assert same(sent.get(field), entry[field]), field
    plan = sent.get("plan")
    assert entry["plan_id"] == (sent.get("plan_id") or (plan or {}).get("id") or None)
    if plan is None:
        assert entry["plan"] is None
    else:
        expected = {name: plan.get(name) for name in ("id", "slug", "name", "amount", "currency")}
        assert {name: entry["plan"][name] for name in expected} == {**expected, "id": plan.get("id") or None}
        assert entry["plan"]["is_recurring"] is bool(plan.get("is_recurring"))
    assert entry["is_free_trial"] is bool(sent.get("is_free_trial"))
    assert entry["seats"] == (sent.get("seats") or {}).get("quantity")
    for field in ("period_start", "period_end", "canceled_at", "past_due_at", "ended_at", "created_at", "updated_at"):
        assert entry[field] == millis(sent.get(field)), field


def assert_billing_stored_as_sent(
    db: firestore.Client, kind: str, payer_type: str, payer_id: str, data: dict[str, Any]
) -> None:
    if kind == "payment":
        stored = payment_of(db, payer_type, payer_id, data["payment_id"])
        assert stored is not None
        assert set(stored) == set(payments.OWNED_FIELDS)
        for field in ("status", "charge_type", "statement_id"):
            assert same(data.get(field), stored[field]), field
        assert stored["attempt_id"] == data.get("id")
        source = data.get("payment_source")
        assert stored["payment_source"] == (
            None if source is None else {name: source.get(name) for name in ("payment_method", "card_type", "last4")}
        )
        assert [item["id"] for item in stored["subscription_items"]] == [
            item["id"] for item in data.get("subscription_items") or []
        ]
        for field in ("paid_at", "failed_at", "billing_date", "created_at", "updated_at"):
            assert stored[field] == millis(data.get(field)), field
        same_as = {"payer_type": payer_type, "payer_id": payer_id, "payment_id": data["payment_id"]}
        assert PAYMENT.problems(stored, same_as) == []  # field by field, as clerk_sync/documents.py declares
        return
    stored = subscription_of(db, payer_type, payer_id)
    assert stored is not None
    assert set(stored) == set(subscriptions.OWNED_FIELDS)
    assert (stored["payer_type"], stored["payer_id"]) == (payer_type, payer_id)
    assert SUBSCRIPTION.problems(stored, {"payer_type": payer_type, "payer_id": payer_id}) == []
    if kind == "item":
        assert stored["subscription_id"] == data["subscription_id"]
        assert list(stored["items"]) == [data["id"]]
        assert_item_stored_as_sent(data, stored["items"][data["id"]])
        return
    assert stored["subscription_id"] == data["id"]
    for field in ("status", "latest_payment_id"):
        assert same(data.get(field), stored[field]), field
    for field in ("active_at", "canceled_at", "ended_at", "past_due_at", "created_at", "updated_at"):
        assert stored[field] == millis(data.get(field)), field
    sent_items = {item["id"]: item for item in data.get("items") or []}
    assert set(stored["items"]) == set(sent_items)
    for item_id, item in sent_items.items():
        assert_item_stored_as_sent(item, stored["items"][item_id])
    assert stored["active_plans"] == subscriptions.derived(stored["items"])["active_plans"]


@pytest.mark.parametrize("scale", [QUICK, SOAK])
def test_odd_but_valid_billing_events_are_stored_exactly_as_sent_and_nothing_personal(
    client: FlaskClient, db: firestore.Client, scale: int
) -> None:
    def check(case: tuple[str, str, str, dict[str, Any], str]) -> None:
        kind, payer_type, payer_id, data, body = case
        response = send_signed(client, body, case="billing_odd")
        assert (response.status_code, response.get_json()) == (200, {"outcome": "applied"}), body[:300]
        assert_billing_stored_as_sent(db, kind, payer_type, payer_id, data)

    run_property(25 * scale, odd_billing_events(), check)
    everything = repr(snapshot_all(db))
    assert PERSONAL not in everything
    assert CARD not in everything


# ---------------------------------------------------------------------------------------------
# Signed billing bodies that must be refused


@dataclass(frozen=True)
class Seeded:
    """A payer with a subscription (one item) and a payment, which a refused body must leave alone."""

    payer_id: str
    subscription_id: str
    item_id: str
    payment_id: str

    def item(self) -> dict[str, Any]:
        return item_data(self.item_id, "pro", status="past_due", updated_at=NEWER_MS, seats=5)

    def subscription(self) -> dict[str, Any]:
        return subscription_data(self.subscription_id, "user", self.payer_id, [self.item()], updated_at=NEWER_MS)

    def standalone(self) -> dict[str, Any]:
        return standalone_item(self.item(), self.subscription_id, "user", self.payer_id)

    def payment(self) -> dict[str, Any]:
        return payment_data(self.payment_id, "user", self.payer_id, status="failed", updated_at=NEWER_MS)


@pytest.fixture
def seeded_billing(client: FlaskClient) -> Seeded:
    seed = Seeded(new_user_id(), new_id("csub"), new_id("csub_item"), new_id("cpa"))
    item = item_data(seed.item_id, "pro", updated_at=BASE_MS)
    bodies = [
        envelope("subscription.created", subscription_data(seed.subscription_id, "user", seed.payer_id, [item])),
        envelope("paymentAttempt.created", payment_data(seed.payment_id, "user", seed.payer_id, status="pending")),
    ]
    for body in bodies:
        assert send_signed(client, json.dumps(body)).status_code == 200
    return seed


BAD_PLAN_IDS = [value for value in BAD_IDS if value not in ("", None)]
ITEM_BAD_FIELDS: dict[str, list[object]] = {
    "id": BAD_CLERK_IDS,
    "updated_at": [*BAD_TIMES, None, MISSING],
    "status": BAD_STRINGS,
    "interval": BAD_STRINGS,
    "plan_id": BAD_PLAN_IDS,
    "plan": NOT_OBJECTS,
    "plan.id": BAD_PLAN_IDS,
    "plan.slug": BAD_STRINGS,
    "plan.name": BAD_STRINGS,
    "plan.currency": BAD_STRINGS,
    "plan.amount": BAD_COUNTS,
    "plan.is_recurring": FLAGS,
    "is_free_trial": FLAGS,
    "seats": NOT_OBJECTS,
    "seats.quantity": BAD_COUNTS,
    **dict.fromkeys(("period_start", "period_end", "canceled_at", "past_due_at", "ended_at", "created_at"), BAD_TIMES),
}
PAYER_BAD_FIELDS: dict[str, list[object]] = {
    "payer": NOT_AN_OBJECT,
    "payer.user_id": BAD_IDS,
    "payer.id": BAD_TEXT,
}
SUBSCRIPTION_BAD_FIELDS: dict[str, list[object]] = {
    "id": BAD_CLERK_IDS,
    "updated_at": [*BAD_TIMES, None, MISSING],
    "status": BAD_STRINGS,
    "latest_payment_id": BAD_STRINGS,
    "payer_id": BAD_STRINGS,
    "items": ["items", 5, True, {"id": "x"}, [5], [None], [[]], ["csub_item_1"]],
    **dict.fromkeys(("active_at", "canceled_at", "ended_at", "past_due_at", "created_at"), BAD_TIMES),
    **PAYER_BAD_FIELDS,
}
STANDALONE_BAD_FIELDS: dict[str, list[object]] = {
    **ITEM_BAD_FIELDS,
    "subscription_id": BAD_CLERK_IDS,
    **PAYER_BAD_FIELDS,
}
PAYMENT_BAD_FIELDS: dict[str, list[object]] = {
    "payment_id": BAD_CLERK_IDS,
    "updated_at": [*BAD_TIMES, None, MISSING],
    **dict.fromkeys(("id", "statement_id", "status", "charge_type"), BAD_STRINGS),
    **dict.fromkeys(("paid_at", "failed_at", "billing_date", "created_at"), BAD_TIMES),
    "failed_reason": NOT_OBJECTS,
    "failed_reason.code": BAD_STRINGS,
    "totals": NOT_OBJECTS,
    "totals.grand_total": NOT_OBJECTS,
    "totals.grand_total.amount": BAD_COUNTS,
    "totals.grand_total.currency": BAD_STRINGS,
    "payment_source": NOT_OBJECTS,
    "payment_source.last4": BAD_STRINGS,
    "payment_source.card_type": BAD_STRINGS,
    "subscription_items": ["x", 5, {"id": "x"}, [5], [None], [{"id": None}], [{"id": "csub_item/1"}]],
    **PAYER_BAD_FIELDS,
}


@st.composite
def wrong_billing_field_events(draw: st.DrawFn, seed: Seeded) -> str:
    """An event for the seeded payer, newer than what is stored, with one to three fields of the wrong shape."""
    kind = draw(st.sampled_from(["subscription", "nested", "standalone", "payment"]))
    types: tuple[str, ...]
    if kind == "payment":
        data, target, table, types = seed.payment(), None, PAYMENT_BAD_FIELDS, PAYMENT_TYPES
    elif kind == "standalone":
        data, target, table, types = seed.standalone(), None, STANDALONE_BAD_FIELDS, ITEM_TYPES
    elif kind == "nested":
        data, table, types = seed.subscription(), ITEM_BAD_FIELDS, SUBSCRIPTION_TYPES
        target = data["items"][0]
    else:
        data, target, table, types = seed.subscription(), None, SUBSCRIPTION_BAD_FIELDS, SUBSCRIPTION_TYPES
    fields = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True))
    for field in sorted(fields):  # a parent before its children
        put(target if target is not None else data, field, draw(st.sampled_from(table[field])))
    return dump(envelope(draw(st.sampled_from(types)), data), ascii_only=draw(st.booleans()))


@pytest.mark.parametrize("scale", [QUICK, SOAK])
def test_signed_billing_bodies_of_the_wrong_shape_get_a_400_and_change_nothing(
    client: FlaskClient, db: firestore.Client, seeded_billing: Seeded, scale: int
) -> None:
    baseline = Baseline(db)

    def check(body: str) -> None:
        assert_rejected_and_unchanged(send_signed(client, body, case="billing_wrong_field"), baseline)

    run_property(40 * scale, wrong_billing_field_events(seeded_billing), check)


DEEP_MARK = "deep_billing_nesting_goes_here"


@st.composite
def malformed_billing_bodies(draw: st.DrawFn, seed: Seeded) -> str:
    """Signed billing bodies that are cut short, carry no object, or nest too deep."""
    kind = draw(st.sampled_from(["subscription", "standalone", "payment"]))
    data = {"subscription": seed.subscription, "standalone": seed.standalone, "payment": seed.payment}[kind]()
    types = {"subscription": SUBSCRIPTION_TYPES, "standalone": ITEM_TYPES, "payment": PAYMENT_TYPES}[kind]
    event = envelope(draw(st.sampled_from(types)), data)
    shape = draw(st.sampled_from(["truncated", "data", "deep"]))
    if shape == "truncated":
        body = dump(event)
        return body[: draw(st.integers(0, len(body) - 1))]
    if shape == "data":
        put(event, "data", draw(st.sampled_from(BAD_DATA)))
        return dump(event, ascii_only=draw(st.booleans()))
    place = draw(st.sampled_from(["data", "data.payer", "data.id", "data.updated_at", "data.zz_unread"]))
    put(event, place, DEEP_MARK)
    depth = draw(st.sampled_from([10_000, 100_000]))
    return dump(event, ascii_only=True).replace(json.dumps(DEEP_MARK), "[" * depth + "]" * depth, 1)


@pytest.mark.parametrize("scale", [QUICK, SOAK])
def test_cut_short_empty_or_too_deep_billing_bodies_get_a_400_and_change_nothing(
    client: FlaskClient, db: firestore.Client, seeded_billing: Seeded, scale: int
) -> None:
    baseline = Baseline(db)

    def check(body: str) -> None:
        response = send_signed(client, body, case="billing_malformed")
        assert_rejected_and_unchanged(response, baseline)

    run_property(15 * scale, malformed_billing_bodies(seeded_billing), check)


@pytest.mark.parametrize(
    "event_type",
    [
        "subscriptionItem.Active",
        "subscriptionitem.active",
        "subscription",
        "paymentAttempt.deleted",
        "billing.plan.updated",
        "subscriptionItem.paused",
        "commerce.subscription.updated",
        "subscription.updated ",
    ],
)
def test_billing_look_alike_types_are_acknowledged_and_change_nothing(
    client: FlaskClient, db: firestore.Client, seeded_billing: Seeded, event_type: str
) -> None:
    before = snapshot_all(db)

    response = client.post("/", data=(body := json.dumps(envelope(event_type, seeded_billing.subscription()))),
                           headers=signed_headers(body))  # fmt: skip

    assert (response.status_code, response.get_json()) == (200, {"outcome": "ignored"})
    assert snapshot_all(db) == before

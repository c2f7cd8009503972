"""`check` covers billing: no subscription or payment of a deleted payer or under its own tombstone,
every billing field of its type, and `active_plans` / `active_features` what the items grant;
`--repair` sweeps, deletes and recomputes what it can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from billing_events import (
    item_data,
    item_event,
    new_id,
    payment_data,
    payment_event,
    subscription_data,
    subscription_event,
)
from clerk_events import BASE_MS, deletion_event, new_organization_id, new_user_id, signed_headers, user_event
from conftest import PATHS
from flask.testing import FlaskClient
from google.cloud import firestore
from test_check import assert_no_email, run_check

from clerk_sync import billing, documents, payments, subscriptions, versions
from tools import check


def post(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)


def subscription_path(payer_type: str, payer_id: str) -> str:
    return f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"


def payment_path(payer_type: str, payer_id: str, payment_id: str) -> str:
    return f"{billing.payments_collection(PATHS, payer_type, payer_id)}/{payment_id}"


def subscribe(client: FlaskClient, payer_type: str, payer_id: str, slug: str = "pro") -> str:
    """A subscription with one item and one payment, written by the function; returns the subscription id."""
    subscription_id = new_id("csub")
    item = item_data(new_id("csub_item"), slug, updated_at=BASE_MS + 1)
    data = subscription_data(subscription_id, payer_type, payer_id, [item], updated_at=BASE_MS + 1)
    post(client, subscription_event("subscription.created", data))
    post(client, payment_event("paymentAttempt.updated", payment_data(new_id("cpa"), payer_type, payer_id)))
    return subscription_id


def test_the_declaration_check_validates_with_names_every_billing_field_the_function_writes() -> None:
    # check validates billing with clerk_sync/documents.py, as the writers and the client do.
    assert set(documents.SUBSCRIPTION.field_names) == set(subscriptions.OWNED_FIELDS)
    assert set(documents.PAYMENT.field_names) == set(payments.OWNED_FIELDS)
    item_fields = {field.name for field in documents.SUBSCRIPTION_ITEM.fields}
    assert item_fields == {*subscriptions.ITEM_FIELDS, versions.DIGEST_FIELD, subscriptions.FEATURES}


def test_billing_written_by_the_function_passes(
    client: FlaskClient, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ada, gone, acme = new_user_id(), new_user_id(), new_organization_id()
    post(client, user_event("user.created", ada, emails=["ada@example.com"]))
    subscribe(client, "user", ada)
    subscribe(client, "organization", acme, "team")
    subscribe(client, "user", gone)
    post(client, deletion_event(gone))  # sweeps its billing
    # Only an item so far: the subscription's own fields wait for its event.
    lone = new_user_id()
    post(
        client,
        item_event("subscriptionItem.active", item_data(new_id("csub_item"), "pro"), new_id("csub"), "user", lone),
    )
    db.document(subscription_path("user", ada)).update({"app_note": "kept"}, timeout=10)

    code, out, err = run_check(capsys, tmp_path, emulator_host)
    json_code, json_out, _ = run_check(capsys, tmp_path, emulator_host, "--json")

    assert code == 0, out
    assert "3 subscriptions, 2 payments, 0 billing tombstones in " in out
    assert out.endswith("no violations\n")
    assert json_code == 0
    assert json.loads(json_out)["checked"]["subscriptions"] == 3
    assert_no_email(out, err, json_out)


def test_billing_violations_are_reported_by_ids_and_repair_fixes_the_fixable(
    client: FlaskClient, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    left, tombstoned, edited, typed = (new_user_id() for _ in range(4))
    quit_org = new_organization_id()
    for payer_type, payer_id in (("user", left), ("organization", quit_org), ("user", tombstoned), ("user", edited),
                                 ("user", typed)):  # fmt: skip
        subscribe(client, payer_type, payer_id)
    tombstoned_id = db.document(subscription_path("user", tombstoned)).get(timeout=10).get("subscription_id")
    # Left behind: tombstones written without their deletion's sweep (as a lost sweep would leave them).
    db.collection(PATHS.user_tombstones).document(left).set({"clerk_id": left}, timeout=10)
    db.collection(PATHS.organization_tombstones).document(quit_org).set({"clerk_id": quit_org}, timeout=10)
    db.collection(PATHS.billing_tombstones).document(tombstoned_id).set({"subscription_id": tombstoned_id}, timeout=10)
    db.document(subscription_path("user", edited)).update({"active_plans": ["enterprise"]}, timeout=10)
    db.document(subscription_path("user", typed)).update({"payer_id": "user_someone_else"}, timeout=10)

    code, out, err = run_check(capsys, tmp_path, emulator_host)
    repair_code, repaired, _ = run_check(capsys, tmp_path, emulator_host, "--repair")

    assert code == 1
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("billing_", "wrong_type"))}
    kinds = sorted(line.split()[0] for line in out.splitlines() if line.startswith(("billing_", "wrong_type")))
    assert kinds == [
        "billing_derived_stale",
        "billing_of_deleted_organization",
        "billing_of_deleted_organization",  # the subscription and the payment
        "billing_of_deleted_user",
        "billing_of_deleted_user",
        "billing_under_tombstone",
        "wrong_type",
    ]
    assert (
        f"{subscription_path('user', edited)}: active_plans differ from what its items grant"
        in lines["billing_derived_stale"]
    )
    assert f"{subscription_path('user', typed)}: payer_id is not {typed}" in lines["wrong_type"]
    assert_no_email(out, err)
    assert repair_code == 1  # the wrong payer id needs a hand or a fresh event
    _, _, rest = repaired.partition("repair:\n")
    repairs, _, after = rest.partition("after repair:\n")
    assert "NOT DONE" in repairs  # the wrong type, listed for a person
    assert repairs.count("done     ") == 4
    assert f"done     {subscription_path('user', tombstoned)}: {check.REPAIR_VERBS['delete_billing']}: " in repairs
    assert (
        f"done     {subscription_path('user', edited)}: {check.REPAIR_VERBS['rederive_subscription']}: recomputed"
        in repairs
    )
    assert [line.split()[0] for line in after.splitlines() if line.startswith(("billing_", "wrong_type"))] == [
        "wrong_type"
    ]
    assert db.document(subscription_path("user", edited)).get(timeout=10).get("active_plans") == ["pro"]
    assert not db.document(subscription_path("user", tombstoned)).get(timeout=10).exists
    for payer_type, payer_id in (("user", left), ("organization", quit_org)):
        assert (
            list(db.collection(billing.billing_collection(PATHS, payer_type, payer_id)).recursive().stream(timeout=10))
            == []
        )

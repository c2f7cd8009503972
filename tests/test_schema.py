"""The declaration of the synced documents (clerk_sync/documents.py) is what the Python side writes, field by field.

Each kind writes exactly the fields its document declares; each parser builds exactly the declared
Clerk fields, of the declared types; every document the webhook stores validates, however odd the
payload; and the validation names a wrong field by name and type only. Reconcile's and the delivery
simulator's documents are checked in tests/test_reconcile_documents.py and tests/test_delivery_sim.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stored_documents
from billing_events import (
    item_data,
    item_event,
    new_id,
    payment_data,
    payment_event,
    subscription_data,
    subscription_event,
)
from clerk_api import api_plan
from clerk_events import (
    BASE_MS,
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    organization_event,
    signed_headers,
    user_event,
)
from conftest import PATHS
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import (
    billing,
    documents,
    events,
    kind,
    memberships,
    organizations,
    plans,
    schema,
    subscriptions,
    users,
    versions,
)
from clerk_sync.schema import Document

PAYLOADS = Path(__file__).with_name("payloads")
# The declaration of each kind's document. A new kind in events.KINDS without one fails below.
DECLARED = {
    "user": documents.USER,
    "organization": documents.ORGANIZATION,
    "organizationMembership": documents.MEMBERSHIP,
    "subscription": documents.SUBSCRIPTION,
    "paymentAttempt": documents.PAYMENT,
    "role": documents.ROLE,
    "permission": documents.PERMISSION,
    "organizationInvitation": documents.INVITATION,
}
# Firestore cannot hold an array directly inside an array: the metadata is kept as its JSON text.
UNSTORABLE_METADATA = {"matrix": [[1, 2], [3, 4]]}


def parsed(body: str | bytes) -> kind.Upsert:
    change = events.parse_event(body.encode() if isinstance(body, str) else body)
    assert isinstance(change, kind.Upsert)
    return change


def as_written(change: kind.Upsert) -> dict[str, Any]:
    """The document as the upsert body writes it (the server's time stands in for SERVER_TIMESTAMP)."""
    return {**change.document, "synced_at": datetime.now(UTC), versions.DIGEST_FIELD: change.digest}


def test_every_kind_writes_exactly_the_fields_its_document_declares() -> None:
    for declared_kind in events.KINDS:
        declared = DECLARED[declared_kind.family]

        assert set(declared_kind.owned_fields) == set(declared.field_names), declared_kind.family
        # Every field Clerk sets is versioned (in the digest); a subscription's own digest is versioned too.
        assert set(declared.names_set_by("clerk")) <= set(declared_kind.synced_fields), declared_kind.family
        assert set(declared_kind.id_fields) <= set(declared.field_names)
    for plain in (users.KIND, organizations.KIND, memberships.KIND):
        assert plain.synced_fields == DECLARED[plain.family].names_set_by("clerk")


def test_billing_takes_its_fields_from_the_declaration() -> None:
    item_fields = {field.name for field in documents.SUBSCRIPTION_ITEM.fields}

    assert item_fields == {*subscriptions.ITEM_FIELDS, versions.DIGEST_FIELD, subscriptions.FEATURES}
    assert set(subscriptions.DERIVED_FIELDS) <= set(documents.SUBSCRIPTION.names_set_by("sync"))
    assert documents.SUBSCRIPTION.field("payer_type").type == schema.OneOf(billing.PAYER_TYPES)
    assert documents.PLAN.names_set_by("clerk") == plans.PLAN_FIELDS
    assert set(documents.PLAN.field_names) == {*plans.PLAN_FIELDS, "synced_at"}  # what copy_plans writes


def test_the_users_own_fields_beyond_clerks_are_the_declared_sync_fields() -> None:
    assert users.PENDING_FIELD in documents.USER.names_set_by("sync", optional=True)
    assert documents.USER.field(users.PENDING_FIELD).optional
    assert kind.DELETED_AT_FIELD not in documents.USER.field_names  # a stripped user is no synced document


@pytest.mark.parametrize(
    "payload",
    [
        "user_created.json",
        "user_created_phone_only.json",
        "user_updated_email_change.json",
        "organization_created.json",
        "organization_updated.json",
        "organizationMembership_created.json",
        "organizationMembership_updated.json",
    ],
)
def test_clerks_example_payloads_parse_to_exactly_the_declared_fields(payload: str) -> None:
    change = parsed((PAYLOADS / payload).read_bytes())
    declared = DECLARED[change.kind.family]

    assert set(change.document) == set(declared.names_set_by("clerk"))
    assert declared.problems(as_written(change)) == []


@pytest.mark.parametrize(
    "payload",
    [
        "subscription_updated.json",
        "subscriptionItem_active.json",
        "subscriptionItem_canceled.json",
        "subscriptionItem_freeTrialEnding.json",
        "paymentAttempt_updated.json",
    ],
)
def test_clerks_billing_payloads_parse_to_declared_fields_of_their_types(payload: str) -> None:
    # A subscription's document is merged from its parts (subscriptions.py), so an event parses to part of
    # it: declared fields only, each item whole. What the webhook stores is checked whole below.
    change = parsed((PAYLOADS / payload).read_bytes())
    declared = DECLARED[change.kind.family]
    written = as_written(change)

    assert set(change.document) <= set(declared.field_names)
    present = {name: value for name, value in written.items() if name != "sync_digest"}
    items = present.pop("items", None) or {}
    problems = [problem for problem in declared.problems(present) if not problem.endswith(" missing")]
    assert problems == []
    for item_id, entry in items.items():
        assert documents.SUBSCRIPTION_ITEM.problems({**entry, "features": None}, item_id) == []
    if change.kind.family == "paymentAttempt":
        assert set(change.document) == set(declared.names_set_by("clerk"))
        assert declared.problems(written) == []


@pytest.mark.parametrize(
    "body",
    [
        user_event("user.created", "user_plain"),
        user_event("user.created", "user_phone", emails=[], phones=["+15555550100"]),
        user_event("user.created", "user_noprimary", primary=None, first_name=None, last_name=None),
        user_event("user.updated", "user_odd", public_metadata=UNSTORABLE_METADATA, username="odd", banned=True),
        user_event("user.updated", "user_times", created_at=None, last_sign_in_at=BASE_MS, locked=None),
        organization_event("organization.created", "org_plain"),
        organization_event(
            "organization.updated", "org_odd", name=None, max_allowed_memberships=None, created_by="", created_at=None
        ),
        membership_event("organizationMembership.created", "orgmem_plain", "org_plain", "user_plain"),
        membership_event(
            "organizationMembership.updated", "orgmem_odd", "org_odd", "user_odd", permissions=None, first_name=None
        ),
    ],
    ids=lambda body: json.loads(body)["data"]["id"],
)
def test_odd_but_valid_payloads_parse_to_exactly_the_declared_fields_of_their_types(body: str) -> None:
    change = parsed(body)
    declared = DECLARED[change.kind.family]

    assert set(change.document) == set(declared.names_set_by("clerk"))
    assert declared.problems(as_written(change)) == []


def post(client: FlaskClient, body: str) -> tuple[int, str]:
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    return response.status_code, str(response.get_json().get("outcome"))


def test_every_document_the_webhook_stores_validates_field_by_field(client: FlaskClient, db: firestore.Client) -> None:
    holder, mover, phone_only, odd = new_user_id(), new_user_id(), new_user_id(), new_user_id()
    organization, bare = new_organization_id(), new_organization_id()
    delivered = [
        user_event("user.created", holder, emails=["taken@example.com"], updated_at=BASE_MS),
        user_event("user.created", mover, emails=["mover@example.com"], updated_at=BASE_MS),
        user_event("user.created", phone_only, emails=[], phones=["+15555550100"], username="phony"),
        user_event("user.created", odd, public_metadata=UNSTORABLE_METADATA, unsafe_metadata={"a": {"b": [1]}}),
        organization_event("organization.created", organization, public_metadata={"tier": "gold"}),
        organization_event("organization.created", bare, name=None, max_allowed_memberships=None, created_by=None),
        membership_event("organizationMembership.created", new_membership_id(), organization, holder),
        membership_event(
            "organizationMembership.created", new_membership_id(), bare, odd, permissions=None, role="org:admin"
        ),
    ]
    for body in delivered:
        assert post(client, body) == (200, "applied")
    # The mover wants an address the holder still has: parked, everything else stored, pending_email set.
    parked = user_event("user.updated", mover, emails=["taken@example.com"], updated_at=BASE_MS + 1, banned=True)
    assert post(client, parked)[0] == 409

    # Billing: a user's subscription (a trial, then a plan's features copied), an organization's with seats,
    # a payer whose item came before its subscription (updated_at null), payments paid and failed, plans.
    plans.copy_plans(db, PATHS, [api_plan("pro", ["export"]), api_plan("free", [], amount=0)], timeout=10)
    trial = item_data(new_id("csub_item"), "pro", is_free_trial=True, updated_at=BASE_MS + 2)
    free = item_data(new_id("csub_item"), "free", status="upcoming", amount=0, updated_at=BASE_MS + 2)
    seats = item_data(new_id("csub_item"), "team", seats=5, interval="annual", updated_at=BASE_MS + 2)
    billed = [
        subscription_event("subscription.created", subscription_data(new_id("csub"), "user", holder, [trial, free])),
        subscription_event("subscription.active", subscription_data(new_id("csub"), "organization", bare, [seats])),
        item_event("subscriptionItem.active", item_data(new_id("csub_item"), "pro"), new_id("csub"), "user", odd),
        payment_event("paymentAttempt.updated", payment_data(new_id("cpa"), "user", holder)),
        payment_event("paymentAttempt.updated", payment_data(new_id("cpa"), "organization", bare, status="failed")),
    ]
    for body in billed:
        assert post(client, body) == (200, "applied")

    assert stored_documents.problems(db, PATHS, minimum=15) == []
    mover_document = db.collection(PATHS.users).document(mover).get(timeout=10).to_dict() or {}
    assert mover_document[users.PENDING_FIELD] == "taken@example.com"  # the optional field was there to check
    assert isinstance(
        (db.collection(PATHS.users).document(odd).get(timeout=10).to_dict() or {})["public_metadata"], str
    )


def test_the_audit_names_undeclared_missing_and_mistyped_fields(db: firestore.Client) -> None:
    change = parsed(user_event("user.created", "user_audited"))
    written = as_written(change)
    db.collection(PATHS.users).document("user_audited").set(
        {**written, "email_verified": "yes", "nickname": "Al", "banned": None}
    )
    db.collection(PATHS.users).document("user_other").set({k: v for k, v in written.items() if k != "locked"})

    found = stored_documents.problems(db, PATHS)

    assert sorted(found) == [
        "users/user_audited: banned is null, not boolean",
        "users/user_audited: email_verified is string, not boolean",
        "users/user_audited: nickname is not declared",
        "users/user_other: clerk_id is not user_other",
        "users/user_other: locked missing",
    ]
    assert sorted(stored_documents.problems(db, PATHS, app_fields=frozenset({"nickname"}), minimum=3)) == [
        "only 2 synced documents checked, expected at least 3",
        "users/user_audited: banned is null, not boolean",
        "users/user_audited: email_verified is string, not boolean",
        "users/user_other: clerk_id is not user_other",
        "users/user_other: locked missing",
    ]


def valid_user() -> dict[str, Any]:
    return as_written(parsed(user_event("user.created", "user_valid")))


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("clerk_id", "not an id!", "clerk_id is string, not Clerk id"),
        ("clerk_id", None, "clerk_id is null, not Clerk id"),
        ("email", 7, "email is integer, not string or null"),
        ("email_addresses", "a@example.com", "email_addresses is string, not list of strings"),
        ("email_addresses", ["a@example.com", 3], "email_addresses[1] is integer, not string"),
        ("public_metadata", [1], "public_metadata is list, not map or the JSON text of an object"),
        ("public_metadata", "[1]", "public_metadata is string, not map or the JSON text of an object"),
        ("updated_at", None, "updated_at is null, not timestamp"),
        ("updated_at", BASE_MS, "updated_at is integer, not timestamp"),
        ("created_at", "2025-01-01", "created_at is string, not timestamp or null"),
        ("banned", 1, "banned is integer, not boolean"),
        ("sync_digest", "ABC", "sync_digest is string, not 64 hex digits"),
        ("pending_email", None, "pending_email is null, not string"),
    ],
)
def test_a_wrong_field_is_named_with_its_type_never_its_value(field: str, value: object, problem: str) -> None:
    assert documents.USER.problems({**valid_user(), field: value}) == [problem]


def test_optional_fields_may_be_absent_and_the_rest_may_not() -> None:
    document = valid_user()

    assert users.PENDING_FIELD not in document
    assert documents.USER.problems(document) == []
    assert documents.USER.problems({k: v for k, v in document.items() if k != "email"}) == ["email missing"]
    assert documents.USER.problems({**document, "app_field": object()}) == []  # the app's own fields are free


def test_metadata_kept_as_json_text_validates() -> None:
    assert documents.USER.problems({**valid_user(), "public_metadata": json.dumps(UNSTORABLE_METADATA)}) == []


def test_a_declaration_refuses_a_field_twice_or_an_id_that_is_no_field() -> None:
    name = schema.Field("name", schema.STRING, "a name")
    with pytest.raises(ValueError, match="declared twice"):
        Document(name="T", title="t", path="t/{id}", fields=(name, name), ids={})
    with pytest.raises(ValueError, match="the path's ids are not fields"):
        Document(name="T", title="t", path="t/{id}", fields=(name,), ids={"id": "clerk_id"})

"""Billing rules over the emulator's REST API: a payer reads its own billing, nobody writes it, and the
helpers (`clerkSyncHasPlan(...)` and friends) gate an app's own collections by plan and feature.

Subscriptions and payments are written by the function from signed events; plans as backfill copies
them. A plan change must take effect in the rules as soon as its webhook is applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import emulator
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
    membership_event,
    new_membership_id,
    new_message_id,
    new_organization_id,
    new_user_id,
    signed_headers,
    user_event,
)
from conftest import PATHS, PROJECT, ROOT
from flask.testing import FlaskClient
from google.cloud import firestore
from test_rules_organizations import denied, ids_in, rest

from clerk_sync import billing
from tools import rules

RULES = (ROOT / "firestore.rules").read_text()
TIMEOUT_SECONDS = 10
# An app's own collections, gated by the block's helpers (what docs/reading-from-your-app.md shows).
APP_RULES = """
    match /premium/{doc} {
      allow read: if clerkSyncHasPlan('pro');
    }
    match /exports/{doc} {
      allow read: if clerkSyncHasFeature('export');
    }
    match /workspaces/{orgId}/reports/{doc} {
      allow read: if clerkSyncOrganizationHasPlan(orgId, 'team');
    }
    match /workspaces/{orgId}/audit/{doc} {
      allow read: if clerkSyncOrganizationHasFeature(orgId, 'audit-log');
    }
"""


def with_app_rules(block: str) -> str:
    return (
        "rules_version = '2';\nservice cloud.firestore {\n  match /databases/{database}/documents {\n"
        + APP_RULES
        + block
        + "  }\n}\n"
    )


@dataclass(frozen=True)
class World:
    """Ada pays for Pro, Bob is on Free; Acme (Ada admin, Bob member, Cy billing manager) pays for Team, Beta
    (Bob admin) is on Free."""

    ada: str
    bob: str
    cy: str
    stranger: str  # a synced user with no billing and no organization
    banned: str  # pays for Pro, but Clerk banned them
    acme: str
    beta: str
    ada_subscription: str
    ada_pro_item: str
    ada_payment: str
    acme_payment: str


def _deliver(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outcome"] == "applied"


def user_subscription(user_id: str) -> str:
    return f"{billing.billing_collection(PATHS, 'user', user_id)}/{billing.SUBSCRIPTION}"


def organization_subscription(organization_id: str) -> str:
    return f"{billing.billing_collection(PATHS, 'organization', organization_id)}/{billing.SUBSCRIPTION}"


@pytest.fixture
def rules_host(emulator_host: str) -> Iterator[str]:
    emulator.load_rules(emulator_host, PROJECT, with_app_rules(rules.block(PATHS)))
    try:
        yield emulator_host
    finally:
        emulator.load_rules(emulator_host, PROJECT, RULES)


@pytest.fixture
def world(client: FlaskClient, db: firestore.Client) -> World:
    built = World(
        ada=new_user_id(),
        bob=new_user_id(),
        cy=new_user_id(),
        stranger=new_user_id(),
        banned=new_user_id(),
        acme=new_organization_id(),
        beta=new_organization_id(),
        ada_subscription=new_id("csub"),
        ada_pro_item=new_id("csub_item"),
        ada_payment=new_id("cpa"),
        acme_payment=new_id("cpa"),
    )
    for user_id in (built.ada, built.bob, built.cy, built.stranger, built.banned):
        _deliver(client, user_event("user.created", user_id, emails=[f"{user_id}@example.com"]))
    plans = {"free": ["basic"], "pro": ["basic", "export"], "team": ["basic", "export", "audit-log"]}
    for slug, features in plans.items():
        db.collection(PATHS.billing_plans).document(plan_id(slug)).set(plan_document(slug, features), timeout=10)
    subscriptions = [
        (built.ada, "user", "pro", built.ada_subscription, built.ada_pro_item),
        (built.bob, "user", "free", new_id("csub"), new_id("csub_item")),
        (built.acme, "organization", "team", new_id("csub"), new_id("csub_item")),
        (built.beta, "organization", "free", new_id("csub"), new_id("csub_item")),
        (built.banned, "user", "pro", new_id("csub"), new_id("csub_item")),
    ]
    for payer_id, payer_type, slug, subscription_id, item_id in subscriptions:
        item = item_data(item_id, slug, updated_at=BASE_MS + 1)
        data = subscription_data(subscription_id, payer_type, payer_id, [item], updated_at=BASE_MS + 1)
        _deliver(client, subscription_event("subscription.created", data))
    _deliver(client, payment_event("paymentAttempt.updated", payment_data(built.ada_payment, "user", built.ada)))
    banned = user_event("user.updated", built.banned, emails=[f"{built.banned}@example.com"], banned=True,
                        updated_at=BASE_MS + 5)  # fmt: skip
    _deliver(client, banned)
    acme_payment = payment_data(built.acme_payment, "organization", built.acme)
    _deliver(client, payment_event("paymentAttempt.updated", acme_payment))
    members = [
        (built.acme, built.ada, "org:admin", ["org:sys_memberships:read", "org:sys_memberships:manage"]),
        (built.acme, built.bob, "org:member", ["org:sys_memberships:read"]),
        (built.acme, built.cy, "org:billing", ["org:sys_memberships:read", "org:sys_billing:read"]),
        (built.beta, built.bob, "org:admin", ["org:sys_memberships:read"]),
    ]
    for organization_id, user_id, role, permissions in members:
        body = membership_event(
            "organizationMembership.created",
            new_membership_id(),
            organization_id,
            user_id,
            role=role,
            permissions=permissions,
        )
        _deliver(client, body)
    for path in (
        "premium/guide",
        "exports/csv",
        f"workspaces/{built.acme}/reports/q1",
        f"workspaces/{built.beta}/reports/q1",
    ):
        db.document(path).set({"title": "members only"}, timeout=10)
    for path in (f"workspaces/{built.acme}/audit/log", f"workspaces/{built.beta}/audit/log"):
        db.document(path).set({"title": "audit"}, timeout=10)
    return built


def payments_of(payer_type: str, payer_id: str) -> str:
    return billing.payments_collection(PATHS, payer_type, payer_id)


def test_a_user_reads_their_own_subscription_and_payments_and_nobody_else_does(rules_host: str, world: World) -> None:
    own = user_subscription(world.ada)

    assert rest(rules_host, "GET", own, world.ada)[0] == 200
    assert ids_in(rest(rules_host, "GET", payments_of("user", world.ada), world.ada)) == [world.ada_payment]
    assert rest(rules_host, "GET", f"{payments_of('user', world.ada)}/{world.ada_payment}", world.ada)[0] == 200
    assert denied(rest(rules_host, "GET", own, world.bob))
    assert denied(rest(rules_host, "GET", payments_of("user", world.ada), world.bob))
    assert denied(rest(rules_host, "GET", own, None))


def test_members_get_their_organizations_subscription_and_outsiders_do_not(rules_host: str, world: World) -> None:
    acme = organization_subscription(world.acme)

    assert all(rest(rules_host, "GET", acme, member)[0] == 200 for member in (world.ada, world.bob, world.cy))
    assert denied(rest(rules_host, "GET", acme, world.stranger))
    assert denied(rest(rules_host, "GET", acme, None))
    assert denied(rest(rules_host, "GET", organization_subscription(world.beta), world.ada))
    assert denied(rest(rules_host, "GET", billing.billing_collection(PATHS, "organization", world.acme), world.ada))


def test_an_organizations_payments_are_for_its_admins_and_billing_readers_only(rules_host: str, world: World) -> None:
    payments = payments_of("organization", world.acme)
    one = f"{payments}/{world.acme_payment}"

    assert ids_in(rest(rules_host, "GET", payments, world.ada)) == [world.acme_payment]  # admin
    assert rest(rules_host, "GET", one, world.cy)[0] == 200  # a role with org:sys_billing:read
    assert denied(rest(rules_host, "GET", one, world.bob))  # a plain member
    assert denied(rest(rules_host, "GET", payments, world.bob))
    assert denied(rest(rules_host, "GET", one, world.stranger))
    assert ids_in(rest(rules_host, "GET", payments_of("organization", world.beta), world.bob)) == []  # Beta's admin
    assert denied(rest(rules_host, "GET", payments_of("organization", world.beta), world.ada))  # Acme's admin


def test_nobody_writes_billing_documents_or_plans(rules_host: str, world: World, db: firestore.Client) -> None:
    forged = {"fields": {"active_plans": {"arrayValue": {"values": [{"stringValue": "enterprise"}]}}}}
    targets = [
        (user_subscription(world.ada), world.ada),
        (f"{payments_of('user', world.ada)}/{world.ada_payment}", world.ada),
        (f"{payments_of('user', world.ada)}/cpa_forged", world.ada),
        (organization_subscription(world.acme), world.ada),
        (f"{payments_of('organization', world.acme)}/{world.acme_payment}", world.ada),
        (f"{PATHS.billing_plans}/{plan_id('pro')}", world.ada),
    ]
    before = {path: db.document(path).get(timeout=10).to_dict() for path, _ in targets}

    answers = [
        rest(rules_host, method, path, uid, forged if method == "PATCH" else None)
        for path, uid in targets
        for method in ("PATCH", "DELETE")
    ]

    assert all(denied(answer) for answer in answers)
    assert {path: db.document(path).get(timeout=10).to_dict() for path, _ in targets} == before


def test_a_banned_payer_reads_neither_billing_nor_what_the_plan_gates(rules_host: str, world: World) -> None:
    assert denied(rest(rules_host, "GET", user_subscription(world.banned), world.banned))
    assert denied(rest(rules_host, "GET", "premium/guide", world.banned))
    assert denied(rest(rules_host, "GET", "premium/guide", new_user_id()))  # never synced: no user document


def test_plans_are_for_signed_in_users(rules_host: str, world: World) -> None:
    assert ids_in(rest(rules_host, "GET", PATHS.billing_plans, world.stranger)) == sorted(
        plan_id(slug) for slug in ("free", "pro", "team")
    )
    assert denied(rest(rules_host, "GET", PATHS.billing_plans, None))
    assert denied(rest(rules_host, "GET", PATHS.billing_tombstones, world.ada))


def test_the_helpers_gate_an_apps_collections_by_the_payers_plan_and_features(rules_host: str, world: World) -> None:
    reads = {
        "pro reads premium": rest(rules_host, "GET", "premium/guide", world.ada),
        "free reads premium": rest(rules_host, "GET", "premium/guide", world.bob),
        "no subscription reads premium": rest(rules_host, "GET", "premium/guide", world.stranger),
        "signed out reads premium": rest(rules_host, "GET", "premium/guide", None),
        "pro reads exports (feature)": rest(rules_host, "GET", "exports/csv", world.ada),
        "free reads exports (feature)": rest(rules_host, "GET", "exports/csv", world.bob),
        "team member reads reports": rest(rules_host, "GET", f"workspaces/{world.acme}/reports/q1", world.bob),
        "free org member reads reports": rest(rules_host, "GET", f"workspaces/{world.beta}/reports/q1", world.bob),
        "outsider reads team reports": rest(rules_host, "GET", f"workspaces/{world.acme}/reports/q1", world.stranger),
        "team member reads audit (feature)": rest(rules_host, "GET", f"workspaces/{world.acme}/audit/log", world.cy),
        "free org member reads audit": rest(rules_host, "GET", f"workspaces/{world.beta}/audit/log", world.bob),
    }

    allowed = {name for name, answer in reads.items() if answer[0] == 200}
    assert allowed == {
        "pro reads premium",
        "pro reads exports (feature)",
        "team member reads reports",
        "team member reads audit (feature)",
    }
    assert all(denied(answer) for name, answer in reads.items() if name not in allowed)


def test_a_downgrade_takes_effect_in_the_rules_as_soon_as_its_webhook_is_applied(
    rules_host: str, world: World, client: FlaskClient
) -> None:
    before = rest(rules_host, "GET", "premium/guide", world.ada)
    ended = item_data(world.ada_pro_item, "pro", status="ended", updated_at=BASE_MS + 50)

    _deliver(client, item_event("subscriptionItem.ended", ended, world.ada_subscription, "user", world.ada))

    assert before[0] == 200
    assert denied(rest(rules_host, "GET", "premium/guide", world.ada))
    assert denied(rest(rules_host, "GET", "exports/csv", world.ada))


def test_the_complete_file_keeps_everything_else_closed(emulator_host: str, world: World) -> None:
    emulator.load_rules(emulator_host, PROJECT, RULES)
    try:
        assert rest(emulator_host, "GET", user_subscription(world.ada), world.ada)[0] == 200
        assert denied(rest(emulator_host, "GET", "premium/guide", world.ada))  # the app's: no rule in the file
        assert denied(rest(emulator_host, "GET", f"{PATHS.billing_tombstones}/x", world.ada))
    finally:
        emulator.load_rules(emulator_host, PROJECT, RULES)


ORGANIZATION_SUBSCRIPTION = "/databases/$(database)/documents/organizations/$(orgId)/billing/subscription"
OWN_BILLING_READ = "allow read: if request.auth != null && request.auth.uid == userId && clerkSyncReader();"
FEATURE_HELPER = "\n    }\n\n    // The signed-in user's own subscription grants `feature`"
# Each variant is a plausible loosening, and the check of the matrix below that must notice it.
LOOSENED = {
    "any signed-in user reads a user's billing": (
        OWN_BILLING_READ,
        "allow read: if clerkSyncReader();",
        "other user gets a user's subscription",
    ),
    "anyone gets an organization's subscription": (
        "allow get: if clerkSyncMember(orgId);\n      allow list, write: if false;\n      match /payments/",
        "allow get: if request.auth != null;\n      allow list, write: if false;\n      match /payments/",
        "outsider gets an organization's subscription",
    ),
    "every member reads the payments": (
        "allow read: if clerkSyncBillingReader(orgId);",
        "allow read: if clerkSyncMember(orgId);",
        "plain member reads payments",
    ),
    "the organization's plan without membership": (
        f"return clerkSyncMember(orgId)\n        && exists({ORGANIZATION_SUBSCRIPTION})\n        && plan in",
        f"return clerkSyncReader()\n        && exists({ORGANIZATION_SUBSCRIPTION})\n        && plan in",
        "outsider reads team reports",
    ),
    "plans for the signed out": (
        "    match /billing_plans/{planId} {\n      allow read: if clerkSyncSessionLive();",
        "    match /billing_plans/{planId} {\n      allow read: if true;",
        "signed out lists plans",
    ),
    "a plan from any item, not only the granting ones": (
        ".data.get('active_plans', []);" + FEATURE_HELPER,
        ".data.get('active_plans', []) || true;" + FEATURE_HELPER,
        "free user reads premium",
    ),
    "owner writes own billing": (
        OWN_BILLING_READ + "\n      allow write: if false;",
        "allow read, write: if request.auth != null && request.auth.uid == userId;",
        "owner forges own subscription",
    ),
}


def matrix(rules_host: str, world: World) -> list[str]:
    """Every check the loaded rules get wrong."""
    acme_payment = f"{payments_of('organization', world.acme)}/{world.acme_payment}"
    forged = {"fields": {"active_plans": {"arrayValue": {"values": [{"stringValue": "pro"}]}}}}
    must_deny = {
        "other user gets a user's subscription": ("GET", user_subscription(world.ada), world.bob, None),
        "outsider gets an organization's subscription": (
            "GET",
            organization_subscription(world.acme),
            world.stranger,
            None,
        ),
        "plain member reads payments": ("GET", acme_payment, world.bob, None),
        "outsider reads team reports": ("GET", f"workspaces/{world.acme}/reports/q1", world.stranger, None),
        "signed out lists plans": ("GET", PATHS.billing_plans, None, None),
        "free user reads premium": ("GET", "premium/guide", world.bob, None),
        "owner forges own subscription": ("PATCH", user_subscription(world.bob), world.bob, forged),
    }
    problems = [
        name
        for name, (method, path, uid, body) in must_deny.items()
        if not denied(rest(rules_host, method, path, uid, body))
    ]
    if rest(rules_host, "GET", "premium/guide", world.ada)[0] != 200:
        problems.append("pro user reads premium")
    return problems


@pytest.mark.parametrize("variant", sorted(LOOSENED))
def test_the_checks_notice_rules_that_loosen_billing(rules_host: str, world: World, variant: str) -> None:
    original, loosened, expected = LOOSENED[variant]
    block = rules.block(PATHS)
    assert block.count(original) == 1, f"variant {variant!r} no longer applies to the rules block; update it"
    emulator.load_rules(rules_host, PROJECT, with_app_rules(block.replace(original, loosened)))

    assert expected in matrix(rules_host, world)


def test_the_checks_pass_the_real_block(rules_host: str, world: World) -> None:
    assert matrix(rules_host, world) == []

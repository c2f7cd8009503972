"""Reconcile and backfill cover Clerk Billing: plans copied, every payer's subscription compared item by
item against the stand-in's `GET /billing/subscription_items`, drift repaired through the webhook's
transaction, a subscription Clerk answers 404 for deleted only in a full run with deletions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from billing_events import item_data, item_event, subscription_data, subscription_event
from clerk_api import (
    BASE_MS,
    SECRET_KEY,
    FakeClerk,
    api_organization,
    api_plan,
    api_subscription,
    api_subscription_item,
    serve,
)
from clerk_events import new_message_id
from conftest import PATHS, apply_event
from google.cloud import firestore
from reconcile_runs import clerk_users, counts, run_cli, summary_of

from clerk_sync import billing, events

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")
PRO = api_plan("pro", ["export"])
TEAM = api_plan("team", ["export", "audit-log"], payer_type="org")
FREE = api_plan("free", [], amount=0)


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def subscription_path(payer_type: str, payer_id: str) -> str:
    return f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"


def stored(db: firestore.Client, payer_type: str, payer_id: str) -> dict[str, Any] | None:
    return db.document(subscription_path(payer_type, payer_id)).get(timeout=10).to_dict()


def clerk_with_billing() -> FakeClerk:
    """Three users (Pro, Free, Free) and an organization on Team, seats 8, in the stand-in."""
    users = clerk_users(3)
    organization = api_organization("org_rcbill", name="Acme", created_at=BASE_MS, updated_at=BASE_MS + 1)
    fake = FakeClerk(users, [organization], [], plans=[FREE, PRO, TEAM])
    for index, user in enumerate(users):
        plan = PRO if index == 0 else FREE
        item = api_subscription_item(f"csub_item_rc{index}", plan, "user", user["id"], updated_at=BASE_MS + 5)
        fake.subscriptions[user["id"]] = api_subscription(
            f"csub_rc{index}", "user", user["id"], [item], updated_at=BASE_MS + 5
        )
    team = api_subscription_item("csub_item_rcorg", TEAM, "organization", "org_rcbill", updated_at=BASE_MS + 5, seats=8)
    fake.subscriptions["org_rcbill"] = api_subscription(
        "csub_rcorg", "organization", "org_rcbill", [team], updated_at=BASE_MS + 5
    )
    return fake


@pytest.mark.usefixtures("secret_key")
def test_backfill_copies_plans_and_every_payers_subscription_and_a_second_run_finds_them_in_sync(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = clerk_with_billing()
    with serve(fake):
        code, out, err = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--json")
        again_code, again, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    first, second = summary_of(out), summary_of(again)
    assert code == 0, out + err
    assert counts(first, "plans")["missing"] == 3
    assert counts(first, "subscriptions")["missing"] == 4
    pro = stored(db, "user", "user_rc0000")
    team = stored(db, "organization", "org_rcbill")
    assert pro is not None
    assert team is not None
    assert (pro["active_plans"], pro["active_features"]) == (["pro"], ["export"])
    assert (team["active_plans"], team["active_features"], team["items"]["csub_item_rcorg"]["seats"]) == (
        ["team"],
        ["audit-log", "export"],
        8,
    )
    assert db.collection(PATHS.billing_plans).document("cplan_team").get(timeout=10).get("features") == [
        "export",
        "audit-log",
    ]
    assert again_code == 0
    assert second["outcome"] == "in_sync"
    assert counts(second, "subscriptions")["in_sync"] == 4
    assert counts(second, "plans")["in_sync"] == 3
    # Each payer's subscription was fetched once, by the backfill: the in-sync run's listing agreed.
    fetched = sorted(request.path for request in fake.requests if request.path.endswith("/billing/subscription"))
    payers = ["organizations/org_rcbill", "users/user_rc0000", "users/user_rc0001", "users/user_rc0002"]
    assert fetched == [f"/v1/{payer}/billing/subscription" for payer in payers]


@pytest.mark.usefixtures("secret_key")
def test_reconcile_repairs_a_lost_downgrade_a_lost_item_and_a_plan_change_and_deletes_what_clerk_says_is_gone(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = clerk_with_billing()
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "backfill")
        # Lost deliveries: Pro ended for user 0 (free again), user 1 upgraded, a feature added to Team;
        # user 2's subscription is gone from Clerk (billing turned off for users, say).
        fake.subscriptions["user_rc0000"]["subscription_items"] = [
            api_subscription_item("csub_item_rc0", PRO, "user", "user_rc0000", status="ended", updated_at=BASE_MS + 9),
            api_subscription_item("csub_item_rc0free", FREE, "user", "user_rc0000", updated_at=BASE_MS + 9),
        ]
        fake.subscriptions["user_rc0000"]["updated_at"] = BASE_MS + 9
        fake.subscriptions["user_rc0001"]["subscription_items"].append(
            api_subscription_item("csub_item_rc1pro", PRO, "user", "user_rc0001", updated_at=BASE_MS + 9)
        )
        del fake.subscriptions["user_rc0002"]
        fake.plans[2] = api_plan("team", ["export", "audit-log", "sso"], payer_type="org")
        dry_code, dry, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--dry-run", "--json")
        code, out, err = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert (dry_code, summary_of(dry)["outcome"]) == (3, "drift")
    assert code == 0, out + err
    subscriptions = counts(summary, "subscriptions")
    assert (subscriptions["outdated"], subscriptions["extra"], subscriptions["in_sync"]) == (2, 1, 1)
    assert counts(summary, "plans")["outdated"] == 1
    user0, user1 = stored(db, "user", "user_rc0000"), stored(db, "user", "user_rc0001")
    team = stored(db, "organization", "org_rcbill")
    assert user0 is not None
    assert user1 is not None
    assert team is not None
    assert user0["active_plans"] == ["free"]
    assert user1["active_plans"] == ["free", "pro"]
    assert team["active_features"] == ["audit-log", "export", "sso"]
    assert stored(db, "user", "user_rc0002") is None
    assert db.collection(PATHS.billing_tombstones).document("csub_rc2").get(timeout=10).exists


@pytest.mark.usefixtures("secret_key")
def test_backfill_deletes_no_subscription_and_a_webhook_newer_than_clerk_is_kept(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = clerk_with_billing()
    orphan = subscription_data("csub_orphan", "user", "user_rcorphan", [item_data("csub_item_orphan", "pro")])
    apply_event(db, new_message_id(), events.parse_event(subscription_event("subscription.created", orphan).encode()))
    # A webhook newer than what the listing says: user 0's Pro item past due.
    newer = item_data("csub_item_rc0", "pro", status="past_due", updated_at=BASE_MS + 50)
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "backfill")
        apply_event(
            db,
            new_message_id(),
            events.parse_event(
                item_event("subscriptionItem.pastDue", newer, "csub_rc0", "user", "user_rc0000").encode()
            ),
        )
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--json")

    summary = summary_of(out)
    assert code == 0
    assert counts(summary, "subscriptions")["extra"] == 1  # counted, not deleted: backfill deletes nothing
    assert stored(db, "user", "user_rcorphan") is not None
    user0 = stored(db, "user", "user_rc0000")
    assert user0 is not None
    assert user0["items"]["csub_item_rc0"]["status"] == "past_due"  # Firestore's newer item stays


@pytest.mark.soak
@pytest.mark.usefixtures("secret_key")
def test_a_2000_payer_backfill_then_an_in_sync_full_run(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(2000)
    fake = FakeClerk(users, plans=[FREE, PRO])
    for index, user in enumerate(users):
        plan = PRO if index % 4 == 0 else FREE
        item = api_subscription_item(f"csub_item_soak{index}", plan, "user", user["id"], updated_at=BASE_MS + 5)
        fake.subscriptions[user["id"]] = api_subscription(f"csub_soak{index}", "user", user["id"], [item])
    with serve(fake):
        first_code, first_out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--json")
        second_code, second_out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    first, second = summary_of(first_out), summary_of(second_out)
    with capsys.disabled():
        for label, summary in (("backfill into an empty database", first), ("full reconcile, in sync", second)):
            print(
                f"\nreconcile billing: 2,000 users with a subscription each, {label}: {summary['elapsed_seconds']} s, "
                f"{summary['clerk_requests']} Clerk requests, {summary['firestore_reads']} Firestore reads, "
                f"drift {summary['drift']}"
            )
    assert (first_code, counts(first, "subscriptions")["missing"]) == (0, 2000)
    assert (second_code, second["outcome"], counts(second, "subscriptions")["in_sync"]) == (0, "in_sync", 2000)

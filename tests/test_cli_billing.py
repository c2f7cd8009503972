"""`send` builds Clerk Billing events; `user` and `organization` show the payer's subscription and payments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clerk_events import new_organization_id, new_user_id
from conftest import PATHS, Server
from google.cloud import firestore
from test_cli import _sent_bodies_in_tmp, look, module_server, run_cli, send, server

from clerk_sync import billing, events
from tools import billing_events

__all__ = ["_sent_bodies_in_tmp", "module_server", "server"]  # fixtures shared with test_cli


def subscription(db: firestore.Client, payer_type: str, payer_id: str) -> dict[str, object]:
    path = f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"
    stored = db.document(path).get(timeout=10).to_dict()
    assert stored is not None, path
    return stored


def test_send_billing_events_for_a_user_and_user_shows_the_subscription_and_payments(
    server: Server, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    sent = [
        send(capsys, tmp_path, server, "subscription.created", "--user-id", user_id, "--plan", "pro", "--trial",
             "--updated-at", "1756382400001"),
        send(capsys, tmp_path, server, "subscriptionItem.canceled", "--user-id", user_id, "--plan", "pro", "--trial",
             "--updated-at", "1756382400002"),
        send(capsys, tmp_path, server, "paymentAttempt.updated", "--user-id", user_id, "--status", "failed",
             "--payment-id", "cpa_cli1"),
    ]  # fmt: skip

    code, shown = look(capsys, tmp_path, emulator_host, "user", user_id)

    assert [answer for answer, _ in sent] == [0, 0, 0], sent
    assert all('"outcome": "applied"' in out for _, out in sent)
    stored = subscription(db, "user", user_id)
    assert stored["active_plans"] == ["pro"]  # a canceled trial keeps the plan until the trial ends
    assert code == 0
    assert f"users/{user_id}/billing/subscription: csub_" in shown
    assert "active plans: pro" in shown
    item_line = next(line for line in shown.splitlines() if line.strip().startswith("csub_item_"))
    assert item_line.split()[1:4] == ["pro", "canceled", "yes"]
    payment_line = next(line for line in shown.splitlines() if line.strip().startswith("cpa_cli1"))
    assert payment_line.split()[1:5] == ["failed", "checkout", "$20.00", "visa"]
    assert shown.count("subscription.created") == shown.count("subscriptionItem.canceled") == 1
    assert "paymentAttempt.updated" in shown


def test_send_a_seat_based_organization_plan_and_organization_shows_it(
    server: Server, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    organization_id = new_organization_id()

    code, out = send(capsys, tmp_path, server, "subscription.active", "--org-id", organization_id, "--plan", "team",
                     "--seats", "10")  # fmt: skip
    shown_code, shown = look(capsys, tmp_path, emulator_host, "organization", organization_id)

    assert code == 0, out
    stored = subscription(db, "organization", organization_id)
    (entry,) = stored["items"].values()  # type: ignore[attr-defined]
    assert (entry["seats"], stored["payer_type"]) == (10, "organization")
    assert shown_code == 0
    assert f"organizations/{organization_id}/billing/subscription: csub_" in shown
    assert "active plans: team" in shown
    assert f"organizations/{organization_id}/billing/subscription/payments: 0" in shown


def test_a_payer_without_billing_shows_none(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = look(capsys, tmp_path, emulator_host, "user", "user_nobilling")

    assert code == 1
    assert "users/user_nobilling/billing/subscription: none" in shown


def test_send_billing_events_need_a_payer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, tmp_path, "send", "subscriptionItem.active", "--plan", "pro")

    assert code == 1
    assert "subscriptionItem.active needs --user-id or --org-id (the payer)" in err


def test_every_billing_type_send_builds_is_one_the_function_parses_into_a_change() -> None:
    options = billing_events.Billing(user_id="user_cli", plan="pro")
    parsed = {}
    for event_type in billing_events.BILLING_TYPES:
        data, _, _ = billing_events.build(event_type, options, 1_756_382_400_000)
        body = json.dumps({"type": event_type, "object": "event", "timestamp": 1, "data": data}).encode()
        parsed[event_type] = events.parse_event(body)

    billing_parsers = {
        name for name in events.PARSERS if name.split(".")[0] in {"subscription", "subscriptionItem", "paymentAttempt"}
    }
    assert set(billing_events.BILLING_TYPES) <= billing_parsers
    # The parser also takes spellings Clerk no longer sends; `send` builds only current ones.
    assert billing_parsers - set(billing_events.BILLING_TYPES) == {
        "subscription.past_due",
        "subscriptionItem.past_due",
        "subscriptionItem.created",
    }
    assert not any(isinstance(event, events.IgnoredEvent) for event in parsed.values())

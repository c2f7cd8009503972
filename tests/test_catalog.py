"""Every event type Clerk sends today has a decision, and Clerk's example payload of each is answered 2xx.

The catalog is Clerk's webhook spec (clerk/openapi-specs `webhooks/2025-04-15.yml`, 45 types); each
type's example payload is in tests/payloads/ under its name (`role.updated` -> `role_updated.json`).
The decisions are in docs/data-model.md ("Every event type"): that table and the code must agree.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from clerk_events import envelope, signed_headers
from conftest import ROOT, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import events

PAYLOADS = Path(__file__).with_name("payloads")
CATALOG = (
    "user.created",
    "user.updated",
    "user.deleted",
    "session.created",
    "session.pending",
    "session.ended",
    "session.removed",
    "session.revoked",
    "email.created",
    "sms.created",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationInvitation.created",
    "organizationInvitation.accepted",
    "organizationInvitation.revoked",
    "organizationDomain.created",
    "organizationDomain.updated",
    "organizationDomain.deleted",
    "role.created",
    "role.updated",
    "role.deleted",
    "permission.created",
    "permission.updated",
    "permission.deleted",
    "waitlistEntry.created",
    "waitlistEntry.updated",
    "subscription.created",
    "subscription.updated",
    "subscription.active",
    "subscription.pastDue",
    "subscriptionItem.updated",
    "subscriptionItem.active",
    "subscriptionItem.canceled",
    "subscriptionItem.ended",
    "subscriptionItem.abandoned",
    "subscriptionItem.incomplete",
    "subscriptionItem.pastDue",
    "subscriptionItem.upcoming",
    "subscriptionItem.freeTrialEnding",
    "paymentAttempt.created",
    "paymentAttempt.updated",
)
# Clerk Billing's types (stored by subscriptions.py and payments.py; the table points to its section).
BILLING = re.compile(r"(subscription|subscriptionItem|paymentAttempt)\.")
DECISIONS_PAGE = ROOT / "docs" / "data-model.md"


def fixture(event_type: str) -> str:
    return (PAYLOADS / f"{event_type.replace('.', '_')}.json").read_text()


def test_the_catalog_has_45_types_each_with_clerks_example_payload() -> None:
    assert len(set(CATALOG)) == 45
    assert [json.loads(fixture(event_type))["type"] for event_type in CATALOG] == list(CATALOG)


def test_every_type_clerk_documents_is_stored_or_acknowledged_with_a_reason() -> None:
    undecided = [
        event_type
        for event_type in CATALOG
        if event_type not in events.PARSERS and event_type not in events.ACKNOWLEDGED
    ]

    assert undecided == []
    assert not set(events.PARSERS) & set(events.ACKNOWLEDGED)
    assert set(events.ACKNOWLEDGED) <= set(CATALOG)


@pytest.mark.parametrize("event_type", CATALOG)
def test_clerks_example_payload_is_answered_2xx(client: FlaskClient, db: firestore.Client, event_type: str) -> None:
    body = fixture(event_type)

    response = client.post("/", data=body, headers=signed_headers(body))

    outcome = (response.get_json() or {}).get("outcome")
    assert 200 <= response.status_code < 300, (response.status_code, outcome)
    if event_type in events.PARSERS:
        assert outcome == "applied"
        assert snapshot_all(db) != {}
    else:
        assert outcome == "ignored"
        assert snapshot_all(db) == {}


def test_a_type_clerk_adds_later_is_answered_2xx_with_a_log_line_and_stores_nothing(
    client: FlaskClient, db: firestore.Client
) -> None:
    body = json.dumps(envelope("apiKey.created", {"id": "ak_1", "object": "api_key", "secret": "sk_do_not_log"}))
    printed = io.StringIO()

    with redirect_stdout(printed):
        response = client.post("/", data=body, headers=signed_headers(body))

    lines = [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith("{")]
    assert (response.status_code, (response.get_json() or {}).get("outcome")) == (200, "ignored")
    assert snapshot_all(db) == {}
    assert [(line["event_type"], line["outcome"]) for line in lines] == [("apiKey.created", "ignored")]
    assert lines[0]["message"] == "apiKey.created ignored: not a type this version knows"
    assert "sk_do_not_log" not in printed.getvalue()


def test_a_type_clerk_documents_and_nothing_stores_is_logged_as_ignored_and_nothing_more(
    client: FlaskClient, db: firestore.Client
) -> None:
    body = fixture("waitlistEntry.created")
    printed = io.StringIO()

    with redirect_stdout(printed):
        client.post("/", data=body, headers=signed_headers(body))

    lines = [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["waitlistEntry.created ignored"]
    assert "john.doe@example.com" not in printed.getvalue()


def _decisions() -> dict[str, str]:
    """The data model's table: `| \\`type\\` | decision | ... |` rows of the "Every event type" section."""
    text = DECISIONS_PAGE.read_text()
    section = text.split("## Every event type", 1)[1].split("\n## ", 1)[0]
    found = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for event_type in re.findall(r"`([A-Za-z]+\.[A-Za-z]+)`", cells[0]):
                found[event_type] = cells[1]
    return found


def test_the_data_models_table_gives_every_type_the_decision_the_code_makes() -> None:
    decisions = _decisions()

    assert sorted(decisions) == sorted(CATALOG)
    for event_type, decision in decisions.items():
        if BILLING.match(event_type):
            assert decision.startswith("stored (billing)"), event_type
        elif event_type in events.PARSERS:
            assert decision.startswith("stored"), event_type
        else:
            assert decision.startswith("acknowledged"), event_type

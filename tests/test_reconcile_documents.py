"""What reconcile writes is what the declaration says (clerk_sync/documents.py), field by field.

Reconcile repairs through the webhook's own transactions, from the Backend API's shapes (not the
webhook's): users without an address, with metadata Firestore cannot hold as a map, banned; an
organization and a membership with the optional fields the Backend API allows null; plans, a user's
trial and an organization's seats; documents it replaces and ones it creates.
tests/test_reconcile.py covers what reconcile decides; this covers what it leaves stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import stored_documents
from clerk_api import (
    BASE_MS,
    SECRET_KEY,
    FakeClerk,
    api_membership,
    api_organization,
    api_plan,
    api_subscription,
    api_subscription_item,
    api_user,
    serve,
)
from conftest import PATHS, PROJECT, apply_event
from google.cloud import firestore

from clerk_sync import events
from tools import cli

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


def deliver(db: firestore.Client, message_id: str, event_type: str, data: dict[str, Any]) -> None:
    """What the webhook stored before reconcile ran."""
    body = json.dumps({"type": event_type, "object": "event", "timestamp": BASE_MS, "data": data}).encode()
    event = events.parse_event(body)
    assert not isinstance(event, events.IgnoredEvent)
    apply_event(db, message_id, event)


def test_every_document_reconcile_writes_validates_field_by_field(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    plain = api_user("user_rdplain", email="plain@example.com", created_at=BASE_MS, updated_at=BASE_MS + 10)
    nameless = api_user(
        "user_rdnameless", email=None, created_at=BASE_MS, updated_at=BASE_MS + 10, first_name=None, last_name=None
    )
    odd = api_user("user_rdodd", email="odd@example.com", created_at=BASE_MS, updated_at=BASE_MS + 10)
    odd |= {"public_metadata": {"matrix": [[1, 2]]}, "unsafe_metadata": {"deep": {"er": [1]}}, "banned": True}
    organization = api_organization("org_rdone", name="One", created_at=BASE_MS, updated_at=BASE_MS + 5)
    bare = api_organization("org_rdbare", name="Bare", created_at=BASE_MS, updated_at=BASE_MS + 5)
    bare |= {"created_by": None, "image_url": None}  # the Backend API's model allows no null name or slug
    members = [
        api_membership("orgmem_rd1", organization, plain, role="org:admin", updated_at=BASE_MS + 7),
        api_membership("orgmem_rd2", bare, odd, role="org:member", updated_at=BASE_MS + 7) | {"permissions": []},
    ]
    # Firestore had older copies of two of them; the rest is missing.
    deliver(db, "msg_rd_old_plain", "user.updated", {**plain, "updated_at": BASE_MS + 1, "first_name": "Old"})
    deliver(db, "msg_rd_old_org", "organization.updated", {**organization, "updated_at": BASE_MS + 1, "name": "Old"})
    pro, team = api_plan("pro", ["export"]), api_plan("team", ["seats"], payer_type="org")
    fake = FakeClerk([plain, nameless, odd], [organization, bare], members, plans=[pro, team])
    trial = api_subscription_item("csub_item_rdtrial", pro, "user", "user_rdplain", updated_at=BASE_MS + 8)
    trial["is_free_trial"] = True
    fake.subscriptions["user_rdplain"] = api_subscription(
        "csub_rdplain", "user", "user_rdplain", [trial], updated_at=BASE_MS + 8
    )
    seats = api_subscription_item(
        "csub_item_rdteam", team, "organization", "org_rdone", updated_at=BASE_MS + 8, seats=3
    )
    fake.subscriptions["org_rdone"] = api_subscription(
        "csub_rdone", "organization", "org_rdone", [seats], updated_at=BASE_MS + 8
    )

    with serve(fake):
        capsys.readouterr()
        code = cli.main(["reconcile", "--env-file", str(tmp_path / "absent.env"), "--emulator", emulator_host,
                         "--project", PROJECT, "--server-url", fake.url, "--json"])  # fmt: skip
    out = capsys.readouterr().out

    assert code == 0, out
    assert json.loads(out)["outcome"] == "repaired"
    assert stored_documents.problems(db, PATHS, minimum=11) == []  # 3 users, 2 + 2, 2 subscriptions, 2 plans
    stored_odd = db.collection(PATHS.users).document("user_rdodd").get(timeout=10).to_dict() or {}
    assert isinstance(stored_odd["public_metadata"], str)  # kept as JSON text, and declared so
    assert stored_odd["banned"] is True

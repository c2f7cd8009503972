"""`check` and `check --repair` for Firebase Auth, with the real Auth and Firestore emulators: a banned or
deprovisioned user whose Auth user is enabled, or a deleted user who still has one (a call Svix gave up
on), is reported by id and put right; users who never signed in to Firebase are fine as they are."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from auth_emulator import sign_in_with_custom_token
from clerk_events import deletion_event, new_message_id, new_user_id, signed_headers, user_event
from clerk_sessions import new_session_id
from conftest import PROJECT
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import config, firebase_auth
from tools import check

TIMEOUT_SECONDS = 10.0


@pytest.fixture
def auth_host(auth_emulator_host: str, db: firestore.Client) -> Iterator[str]:
    """The webhook and the tool both reach the Auth emulator."""
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_emulator_host
    config.reset()
    firebase_auth.reset_app()
    yield auth_emulator_host
    firebase_auth.reset_app()


def deliver(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    assert response.status_code == 200, response.get_json()


def signed_in_user(client: FlaskClient, auth_host: str, **flags: bool) -> str:
    """A user the webhook stored, who signed in to Firebase through the exchange's custom token."""
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, emails=[f"{user_id.lower()}@example.com"], **flags))
    token = firebase_auth.create_custom_token(user_id, {"clerk_sid": new_session_id()})
    status, answer = sign_in_with_custom_token(auth_host, token)
    assert status == 200, answer
    return user_id


def with_auth_calls_off(client: FlaskClient, body: str) -> None:
    """Deliver as a webhook whose Auth calls did not happen (say Svix gave up on the 503s)."""
    os.environ["SYNC_FIREBASE_AUTH"] = "false"
    config.reset()
    deliver(client, body)
    os.environ.pop("SYNC_FIREBASE_AUTH")
    config.reset()


def run_check(db: firestore.Client, *, repair: bool) -> tuple[int, dict[str, Any]]:
    """`check --json` (or `check --repair --json`) as the CLI runs it."""
    out = io.StringIO()
    code = check.run(db, config.read_settings(), repair_found=repair, as_json=True, timeout=TIMEOUT_SECONDS, out=out)
    return code, json.loads(out.getvalue())


def auth_state(user_id: str) -> str:
    states = firebase_auth.disabled_states([user_id], PROJECT)
    return "none" if user_id not in states else "disabled" if states[user_id] else "enabled"


def test_check_reports_banned_and_deleted_users_whose_auth_user_lives_and_repair_ends_them(
    auth_host: str, client: FlaskClient, db: firestore.Client
) -> None:
    banned, deprovisioned, deleted = (signed_in_user(client, auth_host) for _ in range(3))
    fine_banned = signed_in_user(client, auth_host)
    never_signed_in = new_user_id()
    email = {user_id: f"{user_id.lower()}@example.com" for user_id in (banned, deprovisioned, fine_banned)}
    with_auth_calls_off(
        client, user_event("user.updated", banned, emails=[email[banned]], updated_at=2**41, banned=True)
    )
    with_auth_calls_off(
        client,
        user_event("user.updated", deprovisioned, emails=[email[deprovisioned]], updated_at=2**41, deprovisioned=True),
    )
    with_auth_calls_off(client, deletion_event(deleted))
    deliver(client, user_event("user.updated", fine_banned, emails=[email[fine_banned]], updated_at=2**41, banned=True))
    deliver(client, user_event("user.created", never_signed_in, banned=True))

    code, found = run_check(db, repair=False)
    repaired_code, repaired = run_check(db, repair=True)
    after_code, after = run_check(db, repair=False)

    assert code == 1
    assert found["checked"]["firebase_auth_users"] == 5  # banned, deprovisioned, deleted, fine_banned, never
    assert sorted((violation["kind"], violation["subject"]) for violation in found["violations"]) == sorted([
        ("auth_user_enabled", f"users/{banned}"),
        ("auth_user_enabled", f"users/{deprovisioned}"),
        ("auth_user_of_deleted_user", f"users/{deleted}"),
    ])  # fmt: skip
    assert all(violation["fixable"] for violation in found["violations"])
    assert repaired_code == 0
    assert sorted(done["result"] for done in repaired["repairs"]) == [
        "Firebase Auth user deleted",
        "Firebase Auth user disabled",
        "Firebase Auth user disabled",
    ]
    assert (after_code, after["violations"]) == (0, [])
    states = [auth_state(user_id) for user_id in (banned, deprovisioned, deleted, fine_banned, never_signed_in)]
    assert states == ["disabled", "disabled", "none", "disabled", "none"]


def test_check_leaves_firebase_auth_alone_when_the_calls_are_off(
    auth_host: str, client: FlaskClient, db: firestore.Client
) -> None:
    user_id = signed_in_user(client, auth_host)
    with_auth_calls_off(client, deletion_event(user_id))
    os.environ["SYNC_FIREBASE_AUTH"] = "false"
    config.reset()

    code, found = run_check(db, repair=False)

    assert (code, found["violations"]) == (0, [])
    assert "firebase_auth_users" not in found["checked"]
    assert auth_state(user_id) == "enabled"

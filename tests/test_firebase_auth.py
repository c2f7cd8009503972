"""Bans, deprovisioning and deletions reach the users' Firebase Auth records, with the real Auth emulator.

The webhook (functions-framework's test client, and real servers for the race) applies the events
to the Firestore emulator; after the commit it disables, enables or deletes the user's Auth record
in the real Firebase Auth emulator, whose refresh endpoint then answers as production does
(`USER_DISABLED`, `INVALID_REFRESH_TOKEN`). A user who never signed in has no record: success. A
failed Auth call answers 503 and Svix's retry, which finds the event recorded, completes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import emulator
import pytest
from auth_emulator import post_json, sign_in_with_custom_token
from auth_proxy import AuthProxy, proxying
from clerk_events import deletion_event, new_message_id, new_user_id, organization_event, session_event, signed_headers
from clerk_events import user_event as clerk_user_event
from clerk_sessions import new_session_id
from conftest import PROJECT, ROOT, Server, start_server, stop_server
from flask.testing import FlaskClient
from google.cloud import firestore
from loopback import send

from clerk_sync import config, firebase_auth

SUBPROCESS_TIMEOUT_SECONDS = 120
AUTH_HELD_BACK_SECONDS = 2.0


@pytest.fixture
def auth_host(auth_emulator_host: str, db: firestore.Client) -> Iterator[str]:
    """The webhook configured to call the Auth emulator (as FIREBASE_AUTH_EMULATOR_HOST does locally)."""
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_emulator_host
    config.reset()
    firebase_auth.reset_app()
    yield auth_emulator_host
    firebase_auth.reset_app()


def user_event(event_type: str, user_id: str, updated_at: int, **flags: bool) -> str:
    """A user event whose address is the user's own (no claim conflicts between users)."""
    return clerk_user_event(
        event_type, user_id, emails=[f"{user_id.lower()}@example.com"], updated_at=updated_at, **flags
    )


def deliver(client: FlaskClient, body: str, message_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """One signed delivery through the webhook adapter."""
    response = client.post("/", data=body, headers=signed_headers(body, message_id=message_id or new_message_id()))
    return response.status_code, response.get_json()


def signed_in(auth_host: str, user_id: str) -> str:
    """Sign the user in to the Auth emulator as the exchange would; their refresh token."""
    token = firebase_auth.create_custom_token(user_id, {"clerk_sid": new_session_id()})
    status, answer = sign_in_with_custom_token(auth_host, token)
    assert status == 200, answer
    return str(answer["refreshToken"])


def refresh(auth_host: str, refresh_token: str) -> str:
    """What a client's refresh gets: `ok`, or the emulator's error message."""
    status, answer = post_json(
        f"http://{auth_host}/securetoken.googleapis.com/v1/token?key=any",
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
    )
    return "ok" if status == 200 else str(answer["error"]["message"])


def auth_record(user_id: str) -> str:
    """The user's Auth record as the emulator holds it: `enabled`, `disabled` or `none`."""
    states = firebase_auth.disabled_states([user_id], PROJECT)
    if user_id not in states:
        return "none"
    return "disabled" if states[user_id] else "enabled"


def test_ban_disables_the_auth_user_and_unban_enables_it(auth_host: str, client: FlaskClient) -> None:
    user_id = new_user_id()
    assert deliver(client, user_event("user.created", user_id, 1_000))[0] == 200
    refresh_token = signed_in(auth_host, user_id)

    banned = deliver(client, user_event("user.updated", user_id, 2_000, banned=True))
    after_ban = (auth_record(user_id), refresh(auth_host, refresh_token))
    unbanned = deliver(client, user_event("user.updated", user_id, 3_000, banned=False))
    after_unban = (auth_record(user_id), refresh(auth_host, refresh_token))

    assert banned == (200, {"outcome": "applied"})
    assert after_ban == ("disabled", "USER_DISABLED")
    assert unbanned == (200, {"outcome": "applied"})
    assert after_unban == ("enabled", "ok")


def test_deprovisioning_disables_the_auth_user(auth_host: str, client: FlaskClient) -> None:
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)

    assert deliver(client, user_event("user.updated", user_id, 2_000, deprovisioned=True))[0] == 200

    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("disabled", "USER_DISABLED")


def test_a_locked_user_keeps_their_firebase_session(auth_host: str, client: FlaskClient) -> None:
    # Clerk's lockout stops new sign-ins after failed attempts (an attacker's too); it ends no session.
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)

    assert deliver(client, user_event("user.updated", user_id, 2_000, locked=True))[0] == 200

    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("enabled", "ok")


def test_deletion_deletes_the_auth_user_and_its_refresh_token_dies(auth_host: str, client: FlaskClient) -> None:
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)

    assert deliver(client, deletion_event(user_id)) == (200, {"outcome": "applied"})

    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("none", "INVALID_REFRESH_TOKEN")


def test_a_user_who_never_signed_in_is_banned_and_deleted_without_an_error(auth_host: str, client: FlaskClient) -> None:
    user_id = new_user_id()

    created_banned = deliver(client, user_event("user.created", user_id, 1_000, banned=True))
    deleted = deliver(client, deletion_event(user_id))

    assert (created_banned, deleted) == ((200, {"outcome": "applied"}), (200, {"outcome": "applied"}))
    assert auth_record(user_id) == "none"


def test_a_failed_auth_call_is_503_and_the_retry_completes_it(
    auth_host: str, client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)
    ban, message_id = user_event("user.updated", user_id, 2_000, banned=True), new_message_id()
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = f"127.0.0.1:{emulator.free_port()}"  # Auth unreachable
    config.reset()
    firebase_auth.reset_app()
    capsys.readouterr()

    failed = deliver(client, ban, message_id)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = (db.collection("users").document(user_id).get(timeout=10).to_dict() or {}).get("banned")
    state_while_down = auth_record_at(auth_host, user_id)
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = auth_host  # Auth is back; Svix retries the same message
    config.reset()
    firebase_auth.reset_app()
    retried = deliver(client, ban, message_id)

    assert failed == (503, {"outcome": "unavailable"})
    assert (line["reason"], line["svix_id"]) == ("firebase_auth unavailable", message_id)
    assert stored is True  # the commit stood: the rules deny this user already
    assert state_while_down == "enabled"
    assert retried == (200, {"outcome": "duplicate"})
    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("disabled", "USER_DISABLED")


def auth_record_at(host: str, user_id: str) -> str:
    """`auth_record` against the emulator at `host`, whatever the webhook is configured with now."""
    saved = os.environ["FIREBASE_AUTH_EMULATOR_HOST"]
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = host
    firebase_auth.reset_app()
    try:
        return auth_record(user_id)
    finally:
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = saved
        firebase_auth.reset_app()


def test_sync_firebase_auth_false_leaves_auth_alone(auth_host: str, client: FlaskClient) -> None:
    os.environ["SYNC_FIREBASE_AUTH"] = "false"
    config.reset()
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)

    assert deliver(client, user_event("user.updated", user_id, 2_000, banned=True))[0] == 200

    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("enabled", "ok")


def test_the_auth_calls_are_on_by_default_and_off_only_when_set_or_without_an_auth_emulator_locally() -> None:
    for name in ("SYNC_FIREBASE_AUTH", "FIRESTORE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST"):
        os.environ.pop(name, None)
    on_cloud = config.read_settings().firebase_auth
    os.environ["FIRESTORE_EMULATOR_HOST"] = "127.0.0.1:8081"
    local_without_auth_emulator = config.read_settings().firebase_auth
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = "127.0.0.1:9099"
    local_with_auth_emulator = config.read_settings().firebase_auth
    os.environ["SYNC_FIREBASE_AUTH"] = "false"
    turned_off = config.read_settings().firebase_auth

    assert (on_cloud, local_without_auth_emulator, local_with_auth_emulator, turned_off) == (True, False, True, False)


@pytest.mark.parametrize(
    ("environment", "variable"),
    [
        ({"SYNC_FIREBASE_AUTH": "maybe"}, "SYNC_FIREBASE_AUTH"),
        ({"FIREBASE_AUTH_EMULATOR_HOST": "9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
        (
            {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099", "K_SERVICE": "clerk-webhook"},
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
    ],
)
def test_unusable_auth_settings_are_500_misconfigured_naming_the_variable(
    client: FlaskClient, environment: dict[str, str], variable: str
) -> None:
    os.environ.update(environment)
    config.reset()

    response = client.post("/", data="{}", headers=signed_headers("{}"))

    assert (response.status_code, response.get_json()["outcome"]) == (500, "misconfigured")
    with pytest.raises(config.Misconfigured) as problem:
        config.read_settings()
    assert problem.value.variable == variable


def test_webhook_loads_firebase_admin_only_for_events_that_need_auth(
    auth_emulator_host: str, db: firestore.Client
) -> None:
    user_id, org_id = new_user_id(), "org_probe" + new_user_id()[5:]
    bodies = [
        user_event("user.created", user_id, 1_000),
        user_event("user.updated", user_id, 2_000, locked=True),
        organization_event("organization.created", org_id),
        session_event("session.created", new_session_id(), user_id),
        session_event("session.revoked", new_session_id(), user_id),
        user_event("user.updated", user_id, 3_000, locked=True, banned=True),
    ]
    script = (
        "import json, sys\n"
        "import functions_framework\n"
        "from clerk_events import signed_headers\n"
        "webhook = functions_framework.create_app(target='clerk_webhook', source='main.py').test_client()\n"
        "seen = []\n"
        "for body in json.loads(sys.stdin.read()):\n"
        "    status = webhook.post('/', data=body, headers=signed_headers(body)).status_code\n"
        "    seen.append([status, 'firebase_admin' in sys.modules])\n"
        "print(json.dumps(seen))\n"
    )
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,
    }

    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(bodies),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == [[200, False]] * 5 + [[200, True]]  # only the ban needed Auth


@pytest.fixture
def slow_and_fast_instances(
    auth_emulator_host: str, emulator_host: str, db: firestore.Client, tmp_path: Path
) -> Iterator[tuple[Server, Server, AuthProxy]]:
    """Two webhook instances (real functions-framework servers) on the same Firestore and Auth; the
    first reaches Auth through a proxy that can hold its calls back."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "THREADS": "8"}
    servers: list[Server] = []
    with proxying(auth_emulator_host) as proxy:
        try:
            for index, host in enumerate((proxy.host, auth_emulator_host)):
                directory = tmp_path / f"instance-{index}"
                directory.mkdir()
                servers.append(start_server(directory, {**environment, "FIREBASE_AUTH_EMULATOR_HOST": host}))
            yield servers[0], servers[1], proxy
        finally:
            for server in servers:
                stop_server(server)


def test_an_auth_call_that_lands_after_a_newer_one_is_put_right_by_its_own_follow_up(
    slow_and_fast_instances: tuple[Server, Server, AuthProxy],
    db: firestore.Client,
    auth_host: str,
    client: FlaskClient,
) -> None:
    # Instance A applies a ban, and its call to Auth is held back; meanwhile instance B applies the
    # newer unban and enables the user. A's late "disable" then lands last. What A applied came from
    # Firestore, and A reads again after its call: it sees the unban and enables the user again.
    slow, fast, proxy = slow_and_fast_instances
    user_id = new_user_id()
    deliver(client, user_event("user.created", user_id, 1_000))
    refresh_token = signed_in(auth_host, user_id)
    proxy.delay = AUTH_HELD_BACK_SECONDS
    ban, unban = user_event("user.updated", user_id, 2_000, banned=True), user_event("user.updated", user_id, 3_000)
    answers: dict[str, int] = {}

    def deliver_to(name: str, server: Server, body: str) -> None:
        answers[name] = send(server.url, body.encode(), signed_headers(body), timeout=30).status

    banning = threading.Thread(target=deliver_to, args=("ban", slow, ban))
    banning.start()
    wait_until(lambda: stored_user(db, user_id).get("banned") is True)  # A committed; its Auth call waits
    deliver_to("unban", fast, unban)
    unbanned_before_the_late_call = auth_record(user_id)
    banning.join(timeout=30)

    assert answers == {"ban": 200, "unban": 200}
    assert unbanned_before_the_late_call == "enabled"
    assert stored_user(db, user_id)["banned"] is False
    assert (auth_record(user_id), refresh(auth_host, refresh_token)) == ("enabled", "ok")
    # A's two calls: the late disable, then the enable its second read asked for.
    assert proxy.calls.count(f"POST /identitytoolkit.googleapis.com/v1/projects/{PROJECT}/accounts:update") == 2


def stored_user(db: firestore.Client, user_id: str) -> dict[str, Any]:
    """The user's document as Firestore holds it now."""
    return db.collection("users").document(user_id).get(timeout=10).to_dict() or {}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` until it holds (fails the test after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)

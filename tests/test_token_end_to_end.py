"""A Clerk session becomes a Firebase sign-in that firestore.rules honour, through real parts only.

A Clerk-shaped RS256 session token → firebase_token served by a real functions-framework process →
the Firebase Auth emulator's signInWithCustomToken → an ID token → the Firestore emulator, where the
webhook function wrote the users' documents and the project's firestore.rules decide. The same path
runs once more through the Firebase JS SDK in Node (tests/js/read_from_app.mjs), as an app would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import emulator
import node_script
import pytest
from auth_emulator import post_json, sign_in_with_custom_token
from auth_proxy import proxying
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
from clerk_events import BASE_MS, membership_event, new_message_id, organization_event, signed_headers, user_event
from clerk_sessions import (
    APP_ORIGIN,
    AUTHORIZED_PARTIES,
    CLERK_PUBLIC_PEM,
    OTHER_KEY,
    new_clerk_user_id,
    new_org_id,
    new_session_id,
    session_claims,
    session_token,
    sign,
    v1_organization,
    v2_organization,
)
from conftest import PATHS, PROJECT, ROOT, TSX, Server, start_server, stop_server
from flask.testing import FlaskClient
from google.cloud import firestore
from loopback import send, send_streamed

from clerk_sync import plans

RULES = (ROOT / "firestore.rules").read_text()
DOCUMENTS = f"projects/{PROJECT}/databases/(default)/documents"
REQUEST_TIMEOUT_SECONDS = 10.0
NODE_TIMEOUT_SECONDS = 60
HUGE_CONTENT_LENGTH = 50 * 1024 * 1024
EARLY_ANSWER_TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, token_service_account: Path) -> Iterator[Server]:
    """firebase_token served by functions-framework (gunicorn) on loopback, configured as deployed."""
    environment = {
        **os.environ,
        "CLERK_JWT_KEY": CLERK_PUBLIC_PEM.strip().replace("\n", "\\n"),  # as pasted into an env var
        "CLERK_AUTHORIZED_PARTIES": AUTHORIZED_PARTIES,
        "GOOGLE_APPLICATION_CREDENTIALS": str(token_service_account),
        "THREADS": "4",
    }
    for name in ("ALLOW_ANY_AUTHORIZED_PARTY", "ALLOW_PENDING_SESSIONS", "FIREBASE_AUTH_EMULATOR_HOST"):
        environment.pop(name, None)
    running = start_server(tmp_path_factory.mktemp("token-server"), environment, target="firebase_token")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def rules_host(emulator_host: str) -> str:
    """The Firestore emulator with the project's own firestore.rules loaded."""
    emulator.load_rules(emulator_host, PROJECT, RULES)
    return emulator_host


def deliver(client: FlaskClient, body: str) -> None:
    """The webhook function applies one signed event."""
    response = client.post("/", data=body, headers=signed_headers(body, message_id=new_message_id()))
    assert response.status_code == 200, response.get_json()


def deliver_user(client: FlaskClient, user_id: str) -> None:
    """The webhook function stores the user, as Clerk's user.created would make it."""
    deliver(client, user_event("user.created", user_id, emails=[f"{user_id.lower()}@example.com"]))


def exchange(server: Server, clerk_token: str, origin: str | None = APP_ORIGIN) -> tuple[int, dict[str, Any]]:
    """POST the Clerk session token to the running function."""
    headers = {"Authorization": f"Bearer {clerk_token}"}
    if origin is not None:
        headers["Origin"] = origin
    reply = send(server.url, None, headers, timeout=REQUEST_TIMEOUT_SECONDS)
    return reply.status, reply.json()


def jwt_payload(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the emulator's ID tokens are unsigned)."""
    segment = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def firestore_get(host: str, path: str, id_token: str | None) -> tuple[int, dict[str, Any]]:
    """A client's REST read of one document, with the ID token as its credentials."""
    headers = {"Authorization": f"Bearer {id_token}"} if id_token else {}
    request = urllib.request.Request(f"http://{host}/v1/{DOCUMENTS}/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def signed_in_id_token(auth_host: str, server: Server, clerk_token: str) -> str:
    """Exchange, then sign in to the Auth emulator with the custom token; the Firebase ID token."""
    status, answer = exchange(server, clerk_token)
    assert status == 200, answer
    status, signed_in = sign_in_with_custom_token(auth_host, answer["token"])
    assert status == 200, signed_in
    return str(signed_in["idToken"])


def test_clerk_session_signs_in_to_firebase_and_reads_only_its_own_user_document(
    auth_emulator_host: str, token_server: Server, rules_host: str, client: FlaskClient
) -> None:
    owner, other, org_id, other_org = new_clerk_user_id(), new_clerk_user_id(), new_org_id(), new_org_id()
    deliver_user(client, owner)
    deliver_user(client, other)
    for organization_id, member in ((org_id, owner), (other_org, other)):
        deliver(client, organization_event("organization.created", organization_id, name=f"Org {member[-4:]}"))
        deliver(
            client,
            membership_event("organizationMembership.created", f"orgmem_{member[-10:]}", organization_id, member),
        )
    session_id = new_session_id()
    clerk_token = session_token(owner, sid=session_id, **v2_organization(org_id, role="admin", slug="acme"))

    id_token = signed_in_id_token(auth_emulator_host, token_server, clerk_token)

    payload = jwt_payload(id_token)
    assert payload["user_id"] == payload["sub"] == owner
    assert payload["clerk_sid"] == session_id  # what the rules check against ended sessions
    assert payload["firebase"]["sign_in_provider"] == "custom"
    assert (payload["org_id"], payload["org_role"], payload["org_slug"]) == (org_id, "admin", "acme")
    status, document = firestore_get(rules_host, f"users/{owner}", id_token)
    assert status == 200, document
    assert document["fields"]["clerk_id"]["stringValue"] == owner
    status, denied = firestore_get(rules_host, f"users/{other}", id_token)
    assert (status, denied["error"]["status"]) == (403, "PERMISSION_DENIED")
    status, signed_out = firestore_get(rules_host, f"users/{owner}", None)
    assert (status, signed_out["error"]["status"]) == (403, "PERMISSION_DENIED")


def test_v1_session_gets_the_same_claims_and_a_session_without_organization_none(
    auth_emulator_host: str, token_server: Server
) -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()

    with_org = jwt_payload(
        signed_in_id_token(auth_emulator_host, token_server, session_token(user_id, **v1_organization(org_id)))
    )
    without_org = jwt_payload(signed_in_id_token(auth_emulator_host, token_server, session_token(user_id)))

    assert (with_org["org_id"], with_org["org_role"], with_org["org_slug"]) == (org_id, "admin", "acme")
    assert without_org["user_id"] == user_id
    assert not {"org_id", "org_role", "org_slug"} & set(without_org)


def test_refreshed_id_token_keeps_the_organization_of_the_exchange(
    auth_emulator_host: str, token_server: Server
) -> None:
    # Why rules must not take org_id alone as membership: it lasts as long as the client refreshes.
    user_id, org_id = new_clerk_user_id(), new_org_id()
    status, answer = exchange(token_server, session_token(user_id, **v2_organization(org_id)))
    assert status == 200, answer
    status, signed_in = sign_in_with_custom_token(auth_emulator_host, answer["token"])
    assert status == 200, signed_in

    status, refreshed = post_json(
        f"http://{auth_emulator_host}/securetoken.googleapis.com/v1/token?key=any",
        {"grant_type": "refresh_token", "refresh_token": signed_in["refreshToken"]},
    )

    assert status == 200, refreshed
    payload = jwt_payload(refreshed["id_token"])
    assert (payload["user_id"], payload["org_id"], payload["org_role"]) == (user_id, org_id, "admin")


def test_forged_session_mints_nothing_over_loopback(token_server: Server) -> None:
    status, answer = exchange(token_server, sign(session_claims(new_clerk_user_id()), OTHER_KEY))

    assert (status, answer) == (401, {"error": "bad_signature"})


def test_jwt_template_and_long_lived_tokens_mint_nothing_over_loopback(token_server: Server) -> None:
    user_id = new_clerk_user_id()
    template = sign(session_claims(user_id, lifetime=3600, sid=None, v=None, sts=None, fva=None))

    assert exchange(token_server, template) == (401, {"error": "not_a_session_token"})
    assert exchange(token_server, session_token(user_id, lifetime=3600)) == (401, {"error": "lifetime_too_long"})


def test_huge_declared_body_is_answered_without_waiting_for_it(token_server: Server) -> None:
    headers = {"Authorization": f"Bearer {session_token(new_clerk_user_id())}", "Origin": APP_ORIGIN}
    started = time.monotonic()

    reply, sent = send_streamed(
        token_server.url,
        [b"tiny"],
        headers,
        content_length=HUGE_CONTENT_LENGTH,
        timeout=EARLY_ANSWER_TIMEOUT_SECONDS,
    )

    # Answered at once, before the 50 MiB could arrive. (gunicorn 27 drops the Connection header an
    # app sets and discards the rest of the body itself; the streamed answer is what avoids the wait.)
    assert reply.status == 200
    assert set(reply.json()) == {"token"}
    assert sent == 4
    assert time.monotonic() - started < EARLY_ANSWER_TIMEOUT_SECONDS


def test_server_writes_one_log_line_per_exchange_without_the_tokens(token_server: Server) -> None:
    user_id = new_clerk_user_id()
    clerk_token = session_token(user_id)
    before = len(token_server.log().splitlines())

    status, answer = exchange(token_server, clerk_token)
    time.sleep(0.2)  # the line is flushed before the answer; allow the log file a moment

    new_lines = token_server.log().splitlines()[before:]
    entries = [json.loads(line) for line in new_lines if line.startswith("{")]
    assert status == 200
    assert [(entry["clerk_id"], entry["outcome"]) for entry in entries] == [(user_id, "minted")]
    text = "\n".join(new_lines)
    assert clerk_token not in text
    assert answer["token"] not in text


def test_the_client_package_reads_typed_what_the_rules_allow_and_nothing_else(
    auth_emulator_host: str,
    token_server: Server,
    rules_host: str,
    client: FlaskClient,
    db: firestore.Client,
    tmp_path: Path,
    docs_ts: Path,
) -> None:
    owner, other, org_id, other_org = new_clerk_user_id(), new_clerk_user_id(), new_org_id(), new_org_id()
    mistyped_org = new_org_id()
    deliver_user(client, owner)
    deliver_user(client, other)
    for organization_id, member in ((org_id, owner), (other_org, other), (mistyped_org, owner)):
        deliver(client, organization_event("organization.created", organization_id, name=f"Org {member[-4:]}"))
        deliver(
            client,
            membership_event("organizationMembership.created", f"orgmem_{organization_id[-6:]}{member[-6:]}",
                             organization_id, member),
        )  # fmt: skip
    # A hand edit the declaration does not allow: the package says so, naming the field, not the value.
    db.collection("organizations").document(mistyped_org).update({"name": 42})
    session_id = new_session_id()
    environment = {
        **os.environ,
        "PROJECT_ID": PROJECT,
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,
        "FIRESTORE_EMULATOR_HOST": rules_host,
        "TOKEN_URL": token_server.url,
        "CLERK_SESSION_TOKEN": session_token(
            owner, sid=session_id, **v2_organization(org_id, role="member", slug="acme")
        ),
        "SESSION_ID": session_id,
        "ORG_ID": org_id,
        "FORGED_SESSION_TOKEN": sign(session_claims(owner), OTHER_KEY),
        "OTHER_UID": other,
        "OTHER_ORG_ID": other_org,
        "MISTYPED_ORG_ID": mistyped_org,
    }

    # tsx runs the built package and the page's firebase.ts (build/docs-ts/ is what `make docs-ts` writes).
    result = subprocess.run(
        [str(TSX), str(ROOT / "tests" / "js" / "read_from_app.mjs")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stored = db.collection("users").document(owner).get(timeout=10).to_dict() or {}
    owner_membership = f"orgmem_{org_id[-6:]}{owner[-6:]}"
    mistyped_at = f"organizations/{mistyped_org}"
    assert report == {
        "forged_exchange": ["exchange-refused: token exchange: 401 bad_signature"],
        "before_sign_in_error": "not signed in to Firebase",
        "uid": owner,
        "claims": {"org_id": org_id, "org_role": "member", "org_slug": "acme"},
        "sign_in_provider": "custom",
        "own": {"clerk_id": owner, "email": f"{owner.lower()}@example.com",
                "updated_at_ms": round(stored["updated_at"].timestamp() * 1000)},
        "watched_clerk_id": owner,
        "memberships": sorted(  # by path, as Firestore orders a collection-group query
            [{"organization_id": found, "role": "org:member"} for found in (org_id, mistyped_org)],
            key=lambda member: member["organization_id"],
        ),
        "live_memberships": sorted([owner_membership, f"orgmem_{mistyped_org[-6:]}{owner[-6:]}"],
                                   key=lambda membership: {owner_membership: org_id}.get(membership, mistyped_org)),
        "organization_name": f"Org {owner[-4:]}",
        "live_organization_name": f"Org {owner[-4:]}",
        "members": [owner],
        "live_members": [owner],
        "mistyped": f"ClerkSyncSchemaError: {mistyped_at}: name is integer, not string or null",
        "mistyped_live": f"ClerkSyncSchemaError: {mistyped_at}: name is integer, not string or null",
        "sync_field_write": "ClerkSyncWriteError: ClerkUser: email is written by the sync only",
        "app_field_write": "permission-denied",  # the converter lets it through; the rules refuse client writes
        "other_error": "permission-denied",
        "other_organization_error": "permission-denied",
        "all_memberships_error": "permission-denied",
        "after_sign_out_error": "permission-denied",
        "after_sign_out_read": "not signed in to Firebase",
        "current_user_after_sign_out": None,
        "errors": [],
        "while_signed_in": [f"data {owner}", "signed out"],
        "metadata": [{}, {"plan": "pro"}],
    }  # fmt: skip


def test_local_development_without_a_key_file_mints_tokens_only_the_auth_emulator_accepts(
    auth_emulator_host: str, tmp_path: Path
) -> None:
    environment = {
        **os.environ,
        "CLERK_JWT_KEY": CLERK_PUBLIC_PEM,
        "ALLOW_ANY_AUTHORIZED_PARTY": "true-local-only",
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,
    }
    for name in ("CLERK_AUTHORIZED_PARTIES", "GOOGLE_APPLICATION_CREDENTIALS", "K_SERVICE"):
        environment.pop(name, None)
    server = start_server(tmp_path, environment, target="firebase_token")
    user_id = new_clerk_user_id()
    try:
        status, answer = exchange(server, session_token(user_id, azp="http://localhost:5173"), "http://localhost:5173")
    finally:
        stop_server(server)

    assert status == 200, answer
    header = json.loads(base64.urlsafe_b64decode(answer["token"].split(".")[0] + "=="))
    assert header["alg"] == "none"  # unsigned: production Firebase would refuse it
    status, signed_in = sign_in_with_custom_token(auth_emulator_host, answer["token"])
    assert status == 200, signed_in
    assert jwt_payload(signed_in["idToken"])["user_id"] == user_id


def test_auth_emulator_refuses_a_token_that_is_not_a_custom_token(auth_emulator_host: str) -> None:
    # The emulator does not check signatures: the signature checks above are ours, this is its own.
    status, answer = post_json(
        f"http://{auth_emulator_host}/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken?key=any",
        {"token": session_token(new_clerk_user_id()), "returnSecureToken": True},
    )

    assert status == 400
    assert "INVALID_CUSTOM_TOKEN" in answer["error"]["message"]


def test_connect_clerk_to_firebase_follows_every_change_of_clerks_session_and_reports_every_failure(
    auth_emulator_host: str, token_server: Server, tmp_path: Path, docs_ts: Path
) -> None:
    user_a, user_b, org_1, org_2 = new_clerk_user_id(), new_clerk_user_id(), new_org_id(), new_org_id()
    session_a, session_b = new_session_id(), new_session_id()
    template_claims = {name: value for name, value in session_claims(user_a).items() if name not in {"sid", "v", "sts"}}
    with proxying(token_server.url.removeprefix("http://").rstrip("/")) as proxy:
        proxy.fail_next = 1  # the first exchange meets a 503: retried
        environment = {
            **os.environ,
            "PROJECT_ID": PROJECT,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,
            "TOKEN_URL": f"http://{proxy.host}/",
            "CLOSED_URL": f"http://127.0.0.1:{emulator.free_port()}/",
            "SESSION_A": session_a,
            "SESSION_B": session_b,
            "ORG_1": org_1,
            "ORG_2": org_2,
            "TOKEN_A_ORG_1": session_token(user_a, sid=session_a, **v2_organization(org_1)),
            "TOKEN_A_ORG_2": session_token(user_a, sid=session_a, **v2_organization(org_2)),
            "TOKEN_B": session_token(user_b, sid=session_b),
            "TEMPLATE_TOKEN": sign(template_claims),
        }
        result = subprocess.run(
            [str(TSX), str(ROOT / "tests" / "js" / "follow_clerk.mjs")],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_SECONDS,
            check=False,
        )
        calls = list(proxy.calls)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    steps = report["steps"]
    a_in = {"uid": user_a, "clerk_sid": session_a}
    assert steps["first_after_a_503"] | {"took_ms": 0} == {**a_in, "org_id": org_1, "sign_ins": 1, "took_ms": 0}
    assert steps["first_after_a_503"]["took_ms"] >= 500  # the retry waited
    assert steps["same_state_again"] == {**a_in, "org_id": org_1, "sign_ins": 1}  # not exchanged again
    assert steps["organization_switch"] == {**a_in, "org_id": org_2, "sign_ins": 2}
    assert steps["other_users_session"] == {"uid": user_b, "clerk_sid": session_b, "org_id": None, "sign_ins": 3}
    assert steps["signed_out"] == {"uid": None, "org_id": None, "sign_ins": 3}
    assert steps["sign_in_replaced_by_sign_out"]["uid"] is None  # the last state wins
    assert steps["sign_out_replaced_by_sign_in"] | {"sign_ins": 0} == {**a_in, "org_id": org_2, "sign_ins": 0}
    assert steps["after_refusals"]["uid"] is None  # a failed exchange signs nobody in
    assert steps["clerk_listener_signed_in"]["uid"] == user_b
    assert steps["clerk_listener_signed_out"]["uid"] is None
    assert report["errors"] == [
        {"code": "no-session-token", "reason": None, "status": None},
        {"code": "exchange-refused", "reason": "not_a_session_token", "status": 401},
        {"code": "exchange-unavailable", "reason": None, "status": None},
    ]
    assert calls.count("POST /") >= 6


def test_the_client_package_reads_billing_typed_and_a_live_subscription_follows_a_downgrade(
    auth_emulator_host: str,
    token_server: Server,
    rules_host: str,
    client: FlaskClient,
    db: firestore.Client,
    tmp_path: Path,
    docs_ts: Path,
) -> None:
    owner, org_id, session_id = new_clerk_user_id(), new_org_id(), new_session_id()
    deliver_user(client, owner)
    deliver(client, organization_event("organization.created", org_id))
    deliver(client, membership_event("organizationMembership.created", f"orgmem_{owner[-10:]}", org_id, owner))
    plans.copy_plans(db, PATHS, [api_plan("pro", ["export"]), api_plan("team", ["seats"])], timeout=10)
    trial = item_data(new_id("csub_item"), "pro", is_free_trial=True, updated_at=BASE_MS + 1)
    subscription_id = new_id("csub")
    deliver(
        client, subscription_event("subscription.created", subscription_data(subscription_id, "user", owner, [trial]))
    )
    team = item_data(new_id("csub_item"), "team", seats=5, updated_at=BASE_MS + 1)
    deliver(
        client,
        subscription_event("subscription.created", subscription_data(new_id("csub"), "organization", org_id, [team])),
    )
    deliver(client, payment_event("paymentAttempt.updated", payment_data(new_id("cpa"), "user", owner)))
    environment = {
        "PROJECT_ID": PROJECT,
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator_host,
        "FIRESTORE_EMULATOR_HOST": rules_host,
        "TOKEN_URL": token_server.url,
        "SESSION_ID": session_id,
        "ORG_ID": org_id,
        "CLERK_SESSION_TOKEN": session_token(owner, sid=session_id, **v2_organization(org_id)),
    }

    app = node_script.start("billing_reads.mjs", environment, tmp_path)
    try:
        ready = node_script.read_json_line(app, NODE_TIMEOUT_SECONDS)
        ended = {**trial, "status": "ended", "ended_at": BASE_MS + 2, "period_end": None, "updated_at": BASE_MS + 2}
        deliver(client, item_event("subscriptionItem.ended", ended, subscription_id, "user", owner))
        node_script.say(app, "downgraded")
        report = node_script.read_json_line(app, NODE_TIMEOUT_SECONDS)
        assert app.wait(timeout=NODE_TIMEOUT_SECONDS) == 0
    finally:
        node_script.stop(app)

    assert ready == {
        "ready": {
            "own": {"payer": f"user/{owner}", "pro": True, "export": True, "team": False,
                    "trial_ends_ms": trial["period_end"], "items": 1},
            "organization": {"payer": f"organization/{org_id}", "team": True, "seats": 5},
            "payments": ["paid $20.00"],
            "plans": ["pro: export", "team: seats"],
        }
    }  # fmt: skip
    assert report == {"seen": [{"pro": True, "export": True}, {"pro": False, "export": False}], "errors": []}

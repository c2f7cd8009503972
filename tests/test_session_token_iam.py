"""Signing as on Cloud Functions: no key file, the runtime service account found through the metadata
server, and every custom token signed by IAM signBlob (tests/google_iam.py serves both on loopback).

The exchange runs in a real functions-framework server with real firebase-admin, google-auth and
requests; only Google's endpoints are stand-ins. What is shown: one signBlob call serves a session's
repeated exchanges, a transient IAM failure (429, 503 after google-auth's retries, a hang) is 503
`unavailable`, and only a refusal of the account's rights is 500 `sign_failed` with the advice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from clerk_sessions import (
    AUTHORIZED_PARTIES,
    CLERK_PUBLIC_PEM,
    new_clerk_user_id,
    new_org_id,
    new_session_id,
    v2_organization,
)
from clerk_sessions import session_token as clerk_session_token
from conftest import Server, start_server, stop_server
from google_iam import SERVICE_ACCOUNT, Google, public_key, serving_google
from loopback import send

from clerk_sync import firebase_auth

FIREBASE_AUDIENCE = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"
REQUEST_TIMEOUT_SECONDS = 20.0


@pytest.fixture(scope="module")
def google(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Google]:
    """The metadata server and IAM stand-in."""
    with serving_google(tmp_path_factory.mktemp("google")) as state:
        yield state


@pytest.fixture(scope="module")
def iam_server(tmp_path_factory: pytest.TempPathFactory, google: Google) -> Iterator[Server]:
    """firebase_token as on Cloud Functions: no GOOGLE_APPLICATION_CREDENTIALS, Google's endpoints here."""
    directory = tmp_path_factory.mktemp("iam-server")
    (directory / "gcloud").mkdir()
    environment = {
        **os.environ,
        "CLERK_JWT_KEY": CLERK_PUBLIC_PEM,
        "CLERK_AUTHORIZED_PARTIES": AUTHORIZED_PARTIES,
        "THREADS": "4",
        **google.environment(directory / "gcloud"),
    }
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "FIREBASE_AUTH_EMULATOR_HOST", "ALLOW_ANY_AUTHORIZED_PARTY"):
        environment.pop(name, None)
    running = start_server(directory, environment, target="firebase_token")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(autouse=True)
def _iam_answers(google: Google) -> Iterator[None]:
    google.mode = "ok"
    yield
    google.mode = "ok"


def exchange(server: Server, token: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST a Clerk session token to the exchange."""
    reply = send(server.url, None, {"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT_SECONDS)
    return reply.status, reply.json(), dict(reply.headers)


def log_entries(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines so far."""
    return [json.loads(line) for line in server.log().splitlines() if line.startswith('{"')]


def test_exchange_signs_through_iam_once_and_reuses_the_token_for_the_same_session(
    iam_server: Server, google: Google
) -> None:
    user_id, session_id, org_id = new_clerk_user_id(), new_session_id(), new_org_id()
    before = google.sign_calls

    first = exchange(iam_server, clerk_session_token(user_id, sid=session_id, **v2_organization(org_id)))
    again = exchange(iam_server, clerk_session_token(user_id, sid=session_id, **v2_organization(org_id)))
    other_session = exchange(iam_server, clerk_session_token(user_id, **v2_organization(org_id)))
    other_organization = exchange(iam_server, clerk_session_token(user_id, sid=session_id))

    assert [answer[0] for answer in (first, again, other_session, other_organization)] == [200] * 4
    payload = jwt.decode(first[1]["token"], public_key(google), algorithms=["RS256"], audience=FIREBASE_AUDIENCE)
    assert (payload["uid"], payload["iss"]) == (user_id, SERVICE_ACCOUNT)
    assert payload["claims"]["clerk_sid"] == session_id
    assert again[1]["token"] == first[1]["token"]  # a fresh session token, the same session and claims
    assert other_session[1]["token"] != first[1]["token"]
    assert other_organization[1]["token"] != first[1]["token"]
    assert google.sign_calls - before == 3


@pytest.mark.parametrize("mode", ["429", "503"])
def test_transient_iam_failure_is_503_unavailable_not_grant_advice(
    iam_server: Server, google: Google, mode: str
) -> None:
    google.mode = mode
    user_id = new_clerk_user_id()

    status, answer, headers = exchange(iam_server, clerk_session_token(user_id))

    assert (status, answer) == (503, {"error": "unavailable"})
    assert headers["Retry-After"] == "1"
    line = next(entry for entry in reversed(log_entries(iam_server)) if entry.get("clerk_id") == user_id)
    assert (line["outcome"], line["reason"]) == ("unavailable", "sign_unavailable")
    assert "serviceAccountTokenCreator" not in line["message"]


def test_hanging_iam_is_given_up_and_answered_503(iam_server: Server, google: Google) -> None:
    google.mode = "hang"
    started = time.monotonic()

    status, answer, _ = exchange(iam_server, clerk_session_token(new_clerk_user_id()))

    assert (status, answer) == (503, {"error": "unavailable"})
    assert time.monotonic() - started < firebase_auth.CALL_TIMEOUT_SECONDS + 2


def test_iam_refusing_the_service_account_is_500_sign_failed_with_the_role_to_grant(
    iam_server: Server, google: Google
) -> None:
    google.mode = "403"
    user_id = new_clerk_user_id()

    status, answer, _ = exchange(iam_server, clerk_session_token(user_id))

    assert (status, answer) == (500, {"error": "sign_failed"})
    line = next(entry for entry in reversed(log_entries(iam_server)) if entry.get("clerk_id") == user_id)
    assert line["reason"] == "sign_failed"
    assert "roles/iam.serviceAccountTokenCreator" in line["message"]


def test_after_iam_recovers_the_next_exchange_signs(iam_server: Server, google: Google) -> None:
    google.mode = "503"
    user_id, session_id = new_clerk_user_id(), new_session_id()
    assert exchange(iam_server, clerk_session_token(user_id, sid=session_id))[0] == 503
    google.mode = "ok"

    status, answer, _ = exchange(iam_server, clerk_session_token(user_id, sid=session_id))

    assert status == 200
    assert jwt.decode(answer["token"], public_key(google), algorithms=["RS256"], audience=FIREBASE_AUDIENCE)

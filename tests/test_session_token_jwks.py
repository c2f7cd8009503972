"""Verification through Clerk's JWKS (CLERK_SECRET_KEY, no CLERK_JWT_KEY), served by a real HTTP server on
loopback that checks the secret key like Clerk's Backend API: cached, keyed by `kid`, bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import emulator
import functions_framework
import jwt
import pytest
from clerk_sessions import (
    CLERK_KEY,
    CLERK_PUBLIC_PEM,
    KEY_ID,
    OTHER_KEY,
    hs256_with_public_key,
    new_clerk_user_id,
    session_claims,
    session_token,
    sign,
    unsigned_token,
)
from conftest import ROOT
from flask.testing import FlaskClient
from loopback import serving

from clerk_sync import jwks, token_settings
from clerk_sync import session_token as tokens

pytestmark = pytest.mark.usefixtures("token_environment")

SECRET_KEY = "sk_test_jwks_example_0001"
HANG_SECONDS = 6.0


@dataclass
class JwksServer:
    """A stand-in for `GET https://api.clerk.com/v1/jwks` on loopback."""

    url: str
    requests: list[str] = field(default_factory=list)  # the Authorization header of each request
    hang: bool = False
    delay: float = 0.0
    failing: bool = False  # answer 500, as Clerk's API does on a bad day


def _jwk() -> dict[str, str]:
    jwk: dict[str, str] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(CLERK_KEY.public_key()))
    return {**jwk, "kid": KEY_ID, "use": "sig", "alg": "RS256"}


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    """Serves the run's Clerk key as a JWKS to requests bearing SECRET_KEY; 401 to others."""
    state = JwksServer(url="")
    body = json.dumps({"keys": [_jwk()]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.headers.get("Authorization", ""))
            if state.hang:
                time.sleep(HANG_SECONDS)
            time.sleep(state.delay)
            ok = self.headers.get("Authorization") == f"Bearer {SECRET_KEY}"
            if state.failing:
                self.send_response(500)
                self.end_headers()
                return
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up waiting
                self.wfile.write(body if ok else b'{"errors": [{"code": "authentication_invalid"}]}')

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test output is for the tests."""

    with serving(Handler) as base:  # a hanging handler never holds up the shutdown
        state.url = f"{base}/v1/jwks"
        os.environ.pop("CLERK_JWT_KEY")
        os.environ["CLERK_SECRET_KEY"] = SECRET_KEY
        os.environ["CLERK_JWKS_URL"] = state.url
        token_settings.settings.cache_clear()
        yield state


def verify(token: str) -> tokens.Session:
    """Verify with the instance's settings (read once, so the JWKS cache is shared)."""
    return tokens.verify_session_token(token, token_settings.settings())


def rejection(token: str) -> str:
    """The reason code `token` is refused with."""
    with pytest.raises(tokens.TokenRejected) as rejected:
        verify(token)
    return rejected.value.reason


def test_jwks_verifies_with_the_secret_key_and_is_fetched_once(jwks_server: JwksServer) -> None:
    user_id = new_clerk_user_id()

    sessions = [verify(session_token(user_id)) for _ in range(3)]

    assert {session.user_id for session in sessions} == {user_id}
    assert jwks_server.requests == [f"Bearer {SECRET_KEY}"]


def test_pem_key_wins_over_the_jwks_and_needs_no_request(jwks_server: JwksServer) -> None:
    os.environ["CLERK_JWT_KEY"] = CLERK_PUBLIC_PEM
    token_settings.settings.cache_clear()

    assert verify(session_token(new_clerk_user_id())).user_id.startswith("user_")
    assert jwks_server.requests == []


def test_unknown_key_id_is_refused_and_refetches_at_most_once(jwks_server: JwksServer) -> None:
    other = sign(session_claims(new_clerk_user_id()), OTHER_KEY, kid="ins_other")

    reasons = [rejection(other) for _ in range(3)]

    assert reasons == ["unknown_key"] * 3
    assert len(jwks_server.requests) <= 2  # the first fetch, at most one refresh per cooldown


def test_same_key_id_with_another_key_is_a_bad_signature(jwks_server: JwksServer) -> None:
    assert rejection(sign(session_claims(new_clerk_user_id()), OTHER_KEY)) == "bad_signature"


def test_non_rs256_tokens_are_refused_before_any_fetch(jwks_server: JwksServer) -> None:
    claims = session_claims(new_clerk_user_id())

    assert rejection(unsigned_token(claims)) == "bad_algorithm"
    assert rejection(hs256_with_public_key(claims)) == "bad_algorithm"
    assert rejection("not-a-jwt") == "malformed_token"
    assert rejection(jwt.encode(claims, CLERK_KEY, algorithm="RS256")) == "unknown_key"  # no kid
    assert jwks_server.requests == []


def test_wrong_secret_key_makes_the_keys_unavailable(jwks_server: JwksServer) -> None:
    os.environ["CLERK_SECRET_KEY"] = "sk_test_wrong"
    token_settings.settings.cache_clear()

    with pytest.raises(jwks.KeysUnavailable):
        verify(session_token(new_clerk_user_id()))
    assert jwks_server.requests == ["Bearer sk_test_wrong"]


def test_hanging_jwks_endpoint_is_given_up_after_the_timeout(jwks_server: JwksServer) -> None:
    jwks_server.hang = True
    started = time.monotonic()

    with pytest.raises(jwks.KeysUnavailable):
        verify(session_token(new_clerk_user_id()))

    assert time.monotonic() - started < jwks.TIMEOUT_SECONDS + 2


def verify_at_once(tokens_to_verify: list[str]) -> list[tuple[str, float]]:
    """Verify each token on its own thread, all at once, as concurrent requests of one instance do;
    each one's result (`ok` or the exception's class name) and how long it took."""
    results: list[tuple[str, float]] = [("", 0.0)] * len(tokens_to_verify)
    start = threading.Barrier(len(tokens_to_verify))

    def one(index: int) -> None:
        start.wait()
        began = time.monotonic()
        try:
            verify(tokens_to_verify[index])
            outcome = "ok"
        except (jwks.KeysUnavailable, tokens.TokenRejected) as problem:
            outcome = type(problem).__name__
        results[index] = (outcome, time.monotonic() - began)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(tokens_to_verify))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=4 * jwks.TIMEOUT_SECONDS + 5)
    return results


def test_concurrent_requests_share_one_fetch_while_clerk_is_slow(jwks_server: JwksServer) -> None:
    jwks_server.delay = 1.0

    results = verify_at_once([session_token(new_clerk_user_id()) for _ in range(4)])

    assert [outcome for outcome, _ in results] == ["ok"] * 4
    assert jwks_server.requests == [f"Bearer {SECRET_KEY}"]


def test_concurrent_requests_during_an_outage_wait_for_one_fetch_then_all_get_unavailable(
    jwks_server: JwksServer,
) -> None:
    jwks_server.hang = True

    results = verify_at_once([session_token(new_clerk_user_id()) for _ in range(4)])

    assert [outcome for outcome, _ in results] == ["KeysUnavailable"] * 4
    assert len(jwks_server.requests) == 1
    # Before: each waited for its own fetch in turn (3, 6, 9, 12 s). Now none waits for more than one.
    assert max(elapsed for _, elapsed in results) < 2 * jwks.TIMEOUT_SECONDS + 1


def test_after_a_failed_fetch_requests_are_answered_without_waiting_again(jwks_server: JwksServer) -> None:
    jwks_server.failing = True
    with pytest.raises(jwks.KeysUnavailable):
        verify(session_token(new_clerk_user_id()))
    jwks_server.failing = False

    with pytest.raises(jwks.KeysUnavailable):
        verify(session_token(new_clerk_user_id()))  # within RETRY_AFTER_FAILURE_SECONDS: no new fetch

    assert len(jwks_server.requests) == 1


def test_the_last_good_key_set_is_served_when_a_refresh_fails(
    jwks_server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "CACHE_SECONDS", 0.5)
    assert verify(session_token(new_clerk_user_id())).user_id.startswith("user_")
    time.sleep(0.6)  # the set is now stale: the next request refreshes it
    jwks_server.failing = True

    after_failed_refresh = [verify(session_token(new_clerk_user_id())) for _ in range(3)]

    assert len(after_failed_refresh) == 3
    assert len(jwks_server.requests) == 2  # the first fetch and one failed refresh, not one per request


def test_a_refresh_is_tried_again_once_the_failure_pause_is_over(
    jwks_server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "RETRY_AFTER_FAILURE_SECONDS", 0.5)
    jwks_server.failing = True
    with pytest.raises(jwks.KeysUnavailable):
        verify(session_token(new_clerk_user_id()))
    jwks_server.failing = False
    time.sleep(0.6)

    assert verify(session_token(new_clerk_user_id())).user_id.startswith("user_")
    assert len(jwks_server.requests) == 2


def test_a_stale_key_set_is_refreshed_when_clerk_answers(
    jwks_server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "CACHE_SECONDS", 0.5)
    verify(session_token(new_clerk_user_id()))
    time.sleep(0.6)

    verify(session_token(new_clerk_user_id()))
    verify(session_token(new_clerk_user_id()))

    assert len(jwks_server.requests) == 2


@pytest.mark.parametrize(
    ("environment", "variable"),
    [
        ({"CLERK_SECRET_KEY": "pk_test_publishable"}, "CLERK_SECRET_KEY"),
        ({"CLERK_JWKS_URL": "http://api.example.com/v1/jwks"}, "CLERK_JWKS_URL"),
        ({"CLERK_SECRET_KEY": ""}, "CLERK_JWT_KEY"),  # neither a PEM nor a secret key
    ],
)
def test_jwks_settings_are_validated(jwks_server: JwksServer, environment: dict[str, str], variable: str) -> None:
    os.environ.update(environment)

    with pytest.raises(token_settings.Misconfigured) as problem:
        token_settings.read_settings()

    assert problem.value.variable == variable


def test_exchange_answers_503_unavailable_when_the_jwks_cannot_be_fetched(
    jwks_server: JwksServer, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["CLERK_JWKS_URL"] = f"http://127.0.0.1:{emulator.free_port()}/v1/jwks"  # nobody listens
    token_settings.settings.cache_clear()
    client: FlaskClient = functions_framework.create_app(  # type: ignore[no-untyped-call]
        target="firebase_token", source=str(ROOT / "main.py")
    ).test_client()

    response = client.post("/", headers={"Authorization": f"Bearer {session_token(new_clerk_user_id())}"})

    assert (response.status_code, response.get_json()) == (503, {"error": "unavailable"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["reason"], line["status"]) for line in lines] == [("jwks_unavailable", 503)]
    assert SECRET_KEY not in json.dumps(lines)

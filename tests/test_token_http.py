"""The firebase_token adapter through functions-framework's test client: every status, CORS, the body never
read, one log line per request, and the webhook's import path free of PyJWT and firebase-admin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import functions_framework
import jwt
import pytest
from clerk_sessions import (
    APP_ORIGIN,
    LOCAL_ORIGIN,
    OTHER_KEY,
    hs256_with_public_key,
    new_clerk_user_id,
    new_org_id,
    session_claims,
    session_token,
    sign,
    unsigned_token,
    v2_organization,
)
from conftest import ROOT
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from clerk_sync import custom_token, token_settings
from clerk_sync import session_token as tokens

pytestmark = pytest.mark.usefixtures("token_environment")

LOG_FIELDS = {"severity", "message", "component", "clerk_id", "org_id", "outcome", "status", "latency_ms"}
BIG_CONTENT_LENGTH = 50 * 1024 * 1024
SUBPROCESS_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="session")
def token_app() -> FlaskClient:
    """The real functions-framework app serving firebase_token from main.py (built once)."""
    flask_app: flask.Flask = functions_framework.create_app(  # type: ignore[no-untyped-call]
        target="firebase_token", source=str(ROOT / "main.py")
    )
    return flask_app.test_client()


def bearer(token: str) -> dict[str, str]:
    """The header the app sends."""
    return {"Authorization": f"Bearer {token}"}


def exchange(client: FlaskClient, headers: dict[str, str], method: str = "POST", **options: Any) -> TestResponse:
    """One request to the exchange."""
    return client.open("/", method=method, headers=headers, **options)


def error_of(response: TestResponse) -> str:
    """The error code, after checking the body is exactly `{"error": code}` and mints nothing."""
    assert response.mimetype == "application/json"
    answer = json.loads(response.get_data())
    assert set(answer) == {"error"}
    return str(answer["error"])


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in captured stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def the_log_line(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The one line the last request wrote (fails if it wrote none or several)."""
    lines = log_lines(capsys.readouterr().out)
    assert len(lines) == 1, lines
    assert set(lines[0]) >= LOG_FIELDS
    assert lines[0]["component"] == "token"
    return lines[0]


def test_valid_session_gets_a_custom_token_for_its_user(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()
    token = session_token(user_id, **v2_organization(org_id, slug="secret-slug"))

    response = exchange(token_app, {**bearer(token), "Origin": APP_ORIGIN})

    assert response.status_code == 200
    answer = response.get_json()
    assert set(answer) == {"token"}
    payload = jwt.decode(answer["token"], options={"verify_signature": False})
    assert payload["uid"] == user_id
    assert payload["claims"] == {
        "clerk_sid": jwt.decode(token, options={"verify_signature": False})["sid"],
        "org_id": org_id,
        "org_role": "admin",
        "org_slug": "secret-slug",
    }
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert response.headers["Vary"] == "Origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Set-Cookie" not in response.headers
    line = the_log_line(capsys)
    assert (line["status"], line["outcome"], line["clerk_id"], line["org_id"]) == (200, "minted", user_id, org_id)
    assert line["severity"] == "INFO"
    assert "secret-slug" not in json.dumps(line)


def test_server_to_server_call_without_origin_is_served_without_cors_headers(token_app: FlaskClient) -> None:
    response = exchange(token_app, bearer(session_token(new_clerk_user_id())))

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def _token_for(build: Callable[[str], str]) -> Callable[[], dict[str, str]]:
    return lambda: bearer(build(new_clerk_user_id()))


BAD_REQUESTS: dict[str, tuple[Callable[[], dict[str, str]], int, str]] = {
    "no Authorization header": (dict, 401, "missing_token"),
    "empty Authorization header": (lambda: {"Authorization": ""}, 401, "missing_token"),
    "Basic credentials": (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "not_bearer"),
    "Bearer without a token": (lambda: {"Authorization": "Bearer"}, 401, "not_bearer"),
    "raw token without Bearer": (lambda: {"Authorization": session_token(new_clerk_user_id())}, 401, "not_bearer"),
    "not a JWT": (lambda: bearer("not-a-jwt"), 401, "malformed_token"),
    "alg none": (_token_for(lambda user: unsigned_token(session_claims(user))), 401, "bad_algorithm"),
    "HS256 keyed with the public key": (
        _token_for(lambda user: hs256_with_public_key(session_claims(user))),
        401,
        "bad_algorithm",
    ),
    "signed by another RSA key": (_token_for(lambda user: sign(session_claims(user), OTHER_KEY)), 401, "bad_signature"),
    "expired": (_token_for(lambda user: session_token(user, exp=int(time.time()) - 30)), 401, "expired"),
    "not yet valid": (_token_for(lambda user: session_token(user, nbf=int(time.time()) + 30)), 401, "not_yet_valid"),
    "wrong azp": (_token_for(lambda user: session_token(user, azp="https://evil.example.com")), 401, "bad_azp"),
    "no azp": (_token_for(lambda user: session_token(user, azp=None)), 401, "missing_azp"),
    "no sub": (_token_for(lambda user: sign({**session_claims(user), "sub": None})), 401, "bad_subject"),
    "sub not a Clerk user id": (lambda: bearer(session_token("12345")), 401, "bad_subject"),
    "pending session": (_token_for(lambda user: session_token(user, sts="pending")), 403, "pending_session"),
    "JWT template token (no sid)": (
        _token_for(lambda user: sign(session_claims(user, sid=None, v=None, sts=None, fva=None))),
        401,
        "not_a_session_token",
    ),
    "token living an hour": (_token_for(lambda user: session_token(user, lifetime=3600)), 401, "lifetime_too_long"),
    "unknown version": (_token_for(lambda user: session_token(user, v=3)), 401, "unsupported_version"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_short_json_error_and_no_token(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    build, status, code = BAD_REQUESTS[case]
    headers = build()

    response = exchange(token_app, {**headers, "Origin": LOCAL_ORIGIN})

    assert (response.status_code, error_of(response)) == (status, code)
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_ORIGIN  # so the app can read the error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    line = the_log_line(capsys)
    assert (line["status"], line["outcome"], line["reason"], line["clerk_id"]) == (status, "rejected", code, None)
    assert line["severity"] == "WARNING"
    token = headers.get("Authorization", "").removeprefix("Bearer ")
    if token:
        assert token not in json.dumps(line)


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_are_405(token_app: FlaskClient, capsys: pytest.CaptureFixture[str], method: str) -> None:
    response = exchange(token_app, bearer(session_token(new_clerk_user_id())), method=method)

    assert (response.status_code, error_of(response)) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert the_log_line(capsys)["outcome"] == "method_not_allowed"


@pytest.mark.parametrize("origin", [APP_ORIGIN, LOCAL_ORIGIN])
def test_preflight_from_an_authorized_party_allows_post_with_authorization(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str], origin: str
) -> None:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }

    response = exchange(token_app, headers, method="OPTIONS")

    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert the_log_line(capsys)["outcome"] == "preflight"


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", APP_ORIGIN + ".evil.example.com"])
def test_preflight_and_post_from_another_origin_are_403_without_cors_headers(
    token_app: FlaskClient, origin: str
) -> None:
    preflight = exchange(token_app, {"Origin": origin, "Access-Control-Request-Method": "POST"}, method="OPTIONS")
    post = exchange(token_app, {**bearer(session_token(new_clerk_user_id())), "Origin": origin})

    for response in (preflight, post):
        assert (response.status_code, error_of(response)) == (403, "origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in response.headers
        assert response.headers["Vary"] == "Origin"


def test_any_party_mode_echoes_any_origin(token_app: FlaskClient) -> None:
    os.environ.pop("CLERK_AUTHORIZED_PARTIES")
    os.environ["ALLOW_ANY_AUTHORIZED_PARTY"] = "true-local-only"
    token_settings.settings.cache_clear()
    origin = "http://localhost:5173"

    response = exchange(token_app, {**bearer(session_token(new_clerk_user_id(), azp=origin)), "Origin": origin})

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLERK_JWT_KEY", None),
        ("CLERK_JWT_KEY", "not a key"),
        ("CLERK_AUTHORIZED_PARTIES", None),
        ("CLERK_AUTHORIZED_PARTIES", "*"),
        ("CLERK_TOKEN_LEEWAY_SECONDS", "-1"),
        ("ALLOW_PENDING_SESSIONS", "maybe"),
        ("ALLOW_MISSING_AZP", "maybe"),
        ("CLERK_ISSUER", "clerk.example.com"),
    ],
)
def test_missing_or_invalid_setting_is_500_misconfigured_and_the_log_names_it(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str], variable: str, value: str | None
) -> None:
    if value is None:
        os.environ.pop(variable)
    else:
        os.environ[variable] = value
    token_settings.settings.cache_clear()

    for method in ("POST", "OPTIONS"):
        response = exchange(token_app, {**bearer(session_token(new_clerk_user_id())), "Origin": APP_ORIGIN}, method)
        assert (response.status_code, error_of(response)) == (500, "misconfigured")
        assert "Access-Control-Allow-Origin" not in response.headers
        line = the_log_line(capsys)
        assert (line["outcome"], line["reason"], line["severity"]) == ("misconfigured", variable, "ERROR")
        assert variable in line["message"]


def test_auth_emulator_without_a_project_is_500_naming_google_cloud_project(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = "127.0.0.1:9099"
    os.environ.pop("GOOGLE_CLOUD_PROJECT")
    token_settings.settings.cache_clear()

    response = exchange(token_app, bearer(session_token(new_clerk_user_id())))

    assert (response.status_code, error_of(response)) == (500, "misconfigured")
    line = the_log_line(capsys)
    assert line["reason"] == "GOOGLE_CLOUD_PROJECT"
    assert "FIREBASE_AUTH_EMULATOR_HOST" in line["message"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in line["message"]


def test_env_example_lists_the_project_beside_the_auth_emulator_host() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    emulator = next(index for index, line in enumerate(lines) if "FIREBASE_AUTH_EMULATOR_HOST=" in line)

    assert lines[emulator + 1] == "# GOOGLE_CLOUD_PROJECT=demo-clerk-sync"


def test_native_client_without_azp_is_served_only_with_allow_missing_azp(token_app: FlaskClient) -> None:
    token = session_token(new_clerk_user_id(), azp=None)
    refused = exchange(token_app, bearer(token))
    os.environ["ALLOW_MISSING_AZP"] = "true"
    token_settings.settings.cache_clear()

    served = exchange(token_app, bearer(token))
    wrong_party = exchange(token_app, bearer(session_token(new_clerk_user_id(), azp="https://evil.example.com")))

    assert (refused.status_code, error_of(refused)) == (401, "missing_azp")
    assert served.status_code == 200
    assert (wrong_party.status_code, error_of(wrong_party)) == (401, "bad_azp")


def test_no_credentials_to_sign_with_is_500_misconfigured_naming_the_key_file(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "absent.json")
    user_id = new_clerk_user_id()

    response = exchange(token_app, bearer(session_token(user_id)))

    assert (response.status_code, error_of(response)) == (500, "misconfigured")
    line = the_log_line(capsys)
    assert (line["reason"], line["clerk_id"]) == ("no_credentials", user_id)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in line["message"]


def test_unexpected_error_is_500_generic_with_frames_but_no_message_on_stderr(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    detail = "leaked-detail"

    def broken(session: tokens.Session) -> str:
        raise RuntimeError(f"{detail} {session.user_id}")

    monkeypatch.setattr(custom_token, "mint", broken)  # a bug in our own code, not a library mock
    token = session_token(new_clerk_user_id())

    response = exchange(token_app, bearer(token))

    assert (response.status_code, error_of(response)) == (500, "error")
    assert b"leaked-detail" not in response.get_data()
    captured = capsys.readouterr()
    lines = log_lines(captured.out)
    assert [(line["status"], line["outcome"]) for line in lines] == [(500, "error")]
    report = json.loads(captured.err.strip().splitlines()[-1])
    assert (report["severity"], report["component"]) == ("ERROR", "token")
    assert report["message"].endswith("builtins.RuntimeError")
    assert "in _token" in report["message"]
    assert "in broken" in report["message"]
    assert "leaked-detail" not in captured.err + captured.out
    assert token not in captured.err + captured.out


class CountingStream(io.BytesIO):
    """A request body that records how much of it the server read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        """Count, then read."""
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        """Count, then read."""
        count = super().readinto(buffer)
        self.bytes_read += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        """Count, then read."""
        line = super().readline(size)
        self.bytes_read += len(line)
        return line


@pytest.mark.parametrize("valid", [True, False], ids=["valid-token", "bad-token"])
def test_large_declared_body_is_never_read_and_the_answer_closes_the_connection(
    token_app: FlaskClient, valid: bool
) -> None:
    body = CountingStream(b"x" * 100)
    token = session_token(new_clerk_user_id()) if valid else "bad"

    # The test client would measure the stream; the environ says what a client declared.
    response = exchange(
        token_app, bearer(token), input_stream=body, environ_overrides={"CONTENT_LENGTH": str(BIG_CONTENT_LENGTH)}
    )

    assert response.status_code == (200 if valid else 401)
    assert body.bytes_read == 0
    assert response.headers["Connection"] == "close"


def test_chunked_body_is_never_read(token_app: FlaskClient) -> None:
    body = CountingStream(b"5\r\nhello\r\n0\r\n\r\n")

    response = exchange(
        token_app,
        {**bearer(session_token(new_clerk_user_id())), "Transfer-Encoding": "chunked"},
        input_stream=body,
    )

    assert response.status_code == 200
    assert body.bytes_read == 0
    assert response.headers["Connection"] == "close"


def test_small_body_is_read_and_ignored_so_the_connection_stays_open(token_app: FlaskClient) -> None:
    data = b'{"ignored": true}'
    body = CountingStream(data)

    response = exchange(
        token_app, bearer(session_token(new_clerk_user_id())), input_stream=body, content_length=len(data)
    )

    assert response.status_code == 200
    assert body.bytes_read == len(data)
    assert "Connection" not in response.headers


def test_body_shorter_than_declared_is_not_an_error(token_app: FlaskClient) -> None:
    body = CountingStream(b"{}")

    response = exchange(token_app, bearer("bad"), input_stream=body, environ_overrides={"CONTENT_LENGTH": "100"})

    assert (response.status_code, error_of(response)) == (401, "malformed_token")


def test_one_log_line_per_request_without_tokens_or_claims_beyond_ids(
    token_app: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()
    good = session_token(user_id, **v2_organization(org_id, role="owner-role-x", slug="slug-private-x"))
    requests: list[tuple[str, dict[str, str]]] = [
        ("POST", {**bearer(good), "Origin": APP_ORIGIN}),
        ("POST", bearer(sign(session_claims(user_id), OTHER_KEY))),
        ("POST", {}),
        ("OPTIONS", {"Origin": APP_ORIGIN}),
        ("GET", {}),
        ("POST", {**bearer(good), "Origin": "https://evil.example.com"}),
    ]

    minted = [exchange(token_app, headers, method) for method, headers in requests]

    lines = log_lines(capsys.readouterr().out)
    assert [line["status"] for line in lines] == [200, 401, 401, 204, 405, 403]
    for line in lines:
        assert set(line) >= LOG_FIELDS
        assert line["latency_ms"] >= 0
    text = json.dumps(lines)
    for secret in (good, good.split(".")[1], good.split(".")[2], minted[0].get_json()["token"]):
        assert secret not in text
    for claim in ("owner-role-x", "slug-private-x", "sess_", APP_ORIGIN):
        assert claim not in text


def test_webhook_import_path_never_loads_pyjwt_or_firebase_admin(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, os, sys\n"
        "import functions_framework\n"
        "from clerk_events import envelope, signed_headers\n"
        "watched = ('jwt', 'firebase_admin', 'clerk_sync.session_token', 'clerk_sync.firebase_auth')\n"
        "def loaded():\n"
        "    return sorted(name for name in watched if name in sys.modules)\n"
        "import main\n"
        "after_import = loaded()\n"
        "webhook = functions_framework.create_app(target='clerk_webhook', source='main.py').test_client()\n"
        "body = json.dumps(envelope('session.created', {'id': 'sess_1', 'object': 'session'}))\n"
        "statuses = [webhook.post('/', data=body, headers=signed_headers(body)).status_code,\n"
        "            webhook.post('/', data=b'{}').status_code, webhook.get('/').status_code]\n"
        "after_webhook = loaded()\n"
        "token = functions_framework.create_app(target='firebase_token', source='main.py').test_client()\n"
        "bearer = {'Authorization': 'Bearer ' + os.environ['PROBE_SESSION_TOKEN']}\n"
        "statuses.append(token.post('/', headers=bearer).status_code)\n"
        "print(json.dumps({'after_import': after_import, 'after_webhook': after_webhook,\n"
        "                  'after_token': loaded(), 'statuses': statuses}))\n"
    )
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "PROBE_SESSION_TOKEN": session_token(new_clerk_user_id()),
    }

    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 400, 405, 200]
    assert report["after_import"] == report["after_webhook"] == []
    # The probe can see the modules: the exchange does load them.
    assert report["after_token"] == ["clerk_sync.firebase_auth", "clerk_sync.session_token", "firebase_admin", "jwt"]

"""The scheduled `clerk_reconcile` entry point over a real server: it refuses every call that is not a
Google-signed OIDC token for its audience from an allowed service account, and runs otherwise.

Google's token signing is stood in for by a key of our own whose certificate a local server
publishes in Google's format (`RECONCILE_CERTS_URL`); the verification code is google-auth's own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from clerk_api import BASE_MS, SECRET_KEY, FakeClerk, api_user, serve
from conftest import PATHS, Server, start_server, stop_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from google.cloud import firestore
from loopback import send, serving
from reconcile_runs import clerk_users, run_cli

INVOKER = "scheduler@demo-clerk-sync-test.iam.gserviceaccount.com"
KEY_ID = "test-key-1"


def keypair() -> tuple[rsa.RSAPrivateKey, str]:
    """An RSA key and a self-signed certificate for it, as Google publishes its signing certificates."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test.googleusercontent.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM).decode()


def token(key: rsa.RSAPrivateKey, audience: str, *, email: str = INVOKER, verified: bool = True) -> str:
    """An OIDC ID token shaped like the ones Cloud Scheduler sends."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signer = crypt.RSASigner.from_string(pem.decode(), key_id=KEY_ID)  # type: ignore[no-untyped-call]
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "sub": "1234567890",
        "email": email,
        "email_verified": verified,
        "iat": now,
        "exp": now + 3600,
    }
    encoded: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
    return encoded.decode()


@pytest.fixture(scope="module")
def signing() -> tuple[rsa.RSAPrivateKey, str]:
    return keypair()


@pytest.fixture(scope="module")
def certs_url(signing: tuple[rsa.RSAPrivateKey, str]) -> Iterator[str]:
    """Google's certificate endpoint, as a local server."""
    body = json.dumps({KEY_ID: signing[1]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    with serving(Handler) as base:
        yield f"{base}/certs"


@pytest.fixture(scope="module")
def clerk_api() -> Iterator[FakeClerk]:
    users = [
        api_user(
            f"user_sched{index}", email=f"s{index}@example.com", created_at=BASE_MS + index, updated_at=BASE_MS + index
        )
        for index in range(4)
    ]
    with serve(FakeClerk(users)) as fake:
        yield fake


@pytest.fixture
def clerk(clerk_api: FakeClerk) -> FakeClerk:
    """The module's fake Clerk, with no requests seen yet."""
    clerk_api.requests.clear()
    return clerk_api


@pytest.fixture(scope="module")
def scheduled_server(
    emulator_host: str, tmp_path_factory: pytest.TempPathFactory, certs_url: str, clerk_api: FakeClerk
) -> Iterator[Server]:
    """`clerk_reconcile` served as deployed (one server for the module: each start costs seconds)."""
    environment = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": emulator_host,
        "CLERK_SECRET_KEY": SECRET_KEY,
        "CLERK_API_URL": clerk_api.url,
        "RECONCILE_AUDIENCE": "https://clerk-reconcile.example.run.app",
        "RECONCILE_INVOKERS": INVOKER,
        "RECONCILE_CERTS_URL": certs_url,
    }
    server = start_server(tmp_path_factory.mktemp("reconcile"), environment, target="clerk_reconcile")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def scheduled(scheduled_server: Server, db: firestore.Client, clerk: FakeClerk) -> Server:
    """The server, with a wiped database and a fresh request log behind it."""
    return scheduled_server


AUDIENCE = "https://clerk-reconcile.example.run.app"


def call(server: Server, authorization: str | None, mode: str = "full") -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": authorization} if authorization else {}
    reply = send(f"{server.url}?mode={mode}", b"", headers)
    return reply.status, reply.json()


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda key, other: None, 401, "no_token"),
        (lambda key, other: "Basic abc", 401, "no_token"),
        (lambda key, other: "Bearer not-a-jwt", 401, "invalid_token"),
        (lambda key, other: f"Bearer {token(other, AUDIENCE)}", 401, "invalid_token"),  # signed by another key
        (lambda key, other: f"Bearer {token(key, 'https://elsewhere.run.app')}", 401, "invalid_token"),
        (lambda key, other: f"Bearer {token(key, AUDIENCE, email='intruder@example.com')}", 403, "not_an_invoker"),
        (lambda key, other: f"Bearer {token(key, AUDIENCE, verified=False)}", 403, "not_an_invoker"),
    ],
    ids=["none", "not_bearer", "not_a_jwt", "other_key", "other_audience", "other_account", "unverified_email"],
)
def test_every_call_but_an_allowed_invokers_is_refused_and_runs_nothing(
    scheduled: Server,
    signing: tuple[rsa.RSAPrivateKey, str],
    clerk: FakeClerk,
    db: firestore.Client,
    make: Any,
    status: int,
    reason: str,
) -> None:
    other, _ = keypair()

    answered, body = call(scheduled, make(signing[0], other))

    line = json.loads([text for text in scheduled.log().splitlines() if text.startswith("{")][-1])
    assert (answered, body) == (status, {"outcome": "refused"})
    assert line["reason"].startswith(reason)
    assert clerk.requests == []
    assert list(db.collection(PATHS.users).stream(timeout=10)) == []


def test_an_allowed_invoker_starts_a_run_that_repairs_and_logs_one_line(
    scheduled: Server, signing: tuple[rsa.RSAPrivateKey, str], db: firestore.Client
) -> None:
    status, body = call(scheduled, f"Bearer {token(signing[0], AUDIENCE)}")

    line = json.loads([text for text in scheduled.log().splitlines() if text.startswith("{")][-1])
    assert status == 200
    assert (body["outcome"], body["mode"], body["drift"]) == ("repaired", "full", 4)
    assert len(list(db.collection(PATHS.users).stream(timeout=10))) == 4
    assert {key: line[key] for key in ("component", "mode", "outcome", "status", "drift", "conflicts", "skipped")} == {
        "component": "reconcile",
        "mode": "full",
        "outcome": "repaired",
        "status": 200,
        "drift": 4,
        "conflicts": 0,
        "skipped": 0,
    }
    assert line["severity"] == "WARNING"  # drift found: worth an alert
    assert SECRET_KEY not in scheduled.log()


def test_without_its_settings_it_answers_500_misconfigured(
    db: firestore.Client, emulator_host: str, tmp_path: Path
) -> None:
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "CLERK_SECRET_KEY": SECRET_KEY}
    server = start_server(tmp_path, environment, target="clerk_reconcile")
    try:
        status, body = call(server, "Bearer x")
    finally:
        stop_server(server)

    assert (status, body) == (500, {"outcome": "misconfigured"})
    assert '"reason":"RECONCILE_AUDIENCE"' in server.log()


@pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")  # clerk-backend-api
def test_a_scheduled_run_never_deletes_90_of_150_users_it_answers_500_for_a_person(
    scheduled: Server,
    signing: tuple[rsa.RSAPrivateKey, str],
    clerk: FakeClerk,
    db: firestore.Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    emulator_host: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    original = clerk.users
    clerk.users = clerk_users(150, prefix="user_mass", name="mass")
    try:
        assert run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")[0] == 0
        clerk.users = clerk.users[:60]

        status, body = call(scheduled, f"Bearer {token(signing[0], AUDIENCE)}")
    finally:
        clerk.users = original

    line = json.loads([text for text in scheduled.log().splitlines() if text.startswith("{")][-1])
    assert (status, body["outcome"], body["stop_reason"]) == (500, "stopped", "mass_deletion")
    assert len(list(db.collection(PATHS.users).stream(timeout=10))) == 150
    assert list(db.collection(PATHS.user_tombstones).stream(timeout=10)) == []
    assert (line["reason"], line["severity"]) == ("mass_deletion", "ERROR")
    assert "--allow-mass-deletion" in line["message"]

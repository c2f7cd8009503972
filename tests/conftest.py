"""One Firestore emulator for the whole run; a clean database and environment for every test."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import emulator
import flask
import functions_framework
import pytest
from clerk_events import SECRET
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import billing, config, event_log, events, instance, paths, transaction
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C, so fixtures stop the emulators and servers they started."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if hasattr(config, "workerinput"):
        return  # an xdist worker: its controller is told, and stops it
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make test`'s two xdist workers, the tests that build client/dist and build/docs-ts in the
    checkout run on one worker, so no node script reads a file another worker's tsc is rewriting."""
    for item in items:
        if {"client_package", "docs_ts"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("checkout-build"))


ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-clerk-sync-test"
SERVER_START_TIMEOUT_SECONDS = 30.0
PATHS = paths.paths_for("users", "organizations")

# Set before main.py is imported, so a developer's .env can never leak into the tests.
os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = SECRET
os.environ["WEBHOOK_SECRET"] = ""
os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
os.environ.pop("K_SERVICE", None)


@pytest.fixture(scope="session")
def emulator_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator from FIRESTORE_EMULATOR_HOST, or one started for this run (with our rules)."""
    existing = os.environ.get("FIRESTORE_EMULATOR_HOST")
    if existing:
        if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
            # Every worker wipes the test project before each test: one emulator cannot serve two.
            raise RuntimeError(f"FIRESTORE_EMULATOR_HOST={existing} with xdist workers: run with -n 0")
        if not emulator.answers(existing, timeout=5):
            raise RuntimeError(f"FIRESTORE_EMULATOR_HOST={existing} does not answer")
        yield existing
        return
    log_path = tmp_path_factory.mktemp("emulator") / "emulator.log"
    process, host = emulator.start(ROOT / "firestore.rules", log_path)
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    try:
        yield host
    finally:
        emulator.stop(process)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Each test may change os.environ; the next one starts from the same settings."""
    saved = dict(os.environ)
    config.reset()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        config.reset()


@pytest.fixture
def db(emulator_host: str) -> Iterator[firestore.Client]:
    """A client on a wiped emulator database; the function's shared client is rebuilt too."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
    emulator.wipe(emulator_host, PROJECT)
    transaction.reset_client()
    event_log.reset()
    instance.forget()  # the wiped database records no instance any more
    yield firestore.Client(project=PROJECT)
    transaction.reset_client()
    event_log.reset()
    instance.forget()


@pytest.fixture(scope="session")
def app() -> FlaskClient:
    """The real functions-framework app around main.py (built once: each build re-imports it)."""
    flask_app: flask.Flask = functions_framework.create_app(  # type: ignore[no-untyped-call]
        target="clerk_webhook", source=str(ROOT / "main.py")
    )
    return flask_app.test_client()


@pytest.fixture
def client(app: FlaskClient, db: firestore.Client) -> FlaskClient:
    """The test client, with a clean database behind it."""
    return app


# Written once per deployment (when event records switched to hashed ids), never by an event itself.
EVENT_LOG_STATE = f"{PATHS.state}/{event_log.STATE_DOCUMENT}"


def snapshot_all(db: firestore.Client) -> dict[str, dict[str, Any]]:
    """Every top-level document, every membership and every billing document, by path (to assert
    'nothing changed').

    Leaves out the event log's migration state, which the first event a fresh database sees writes.
    """
    found = {
        document.reference.path: document.to_dict() or {}
        for collection in db.collections(timeout=10)
        for document in collection.stream(timeout=10)
        if document.reference.path != EVENT_LOG_STATE
    }
    for group in (paths.MEMBERSHIPS, billing.BILLING, billing.PAYMENTS):
        for document in db.collection_group(group).stream(timeout=10):
            found[document.reference.path] = document.to_dict() or {}
    return found


def apply_event(
    db: firestore.Client,
    message_id: str,
    event: events.Event,
    *,
    deadline_seconds: float = 8.0,
    settings: config.Settings | None = None,
) -> Outcome:
    """Apply a parsed event as the function does, with the test settings (or `settings`)."""
    assert not isinstance(event, events.IgnoredEvent)
    chosen = settings or dataclasses.replace(config.read_settings(), firestore_deadline_seconds=deadline_seconds)
    return events.apply_event(db, event, Delivery(message_id=message_id, settings=chosen))


@dataclass
class Server:
    """A real functions-framework process serving main.py on loopback."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")


def start_server(
    tmp_path: Path, environment: dict[str, str], source: Path = ROOT / "main.py", target: str = "clerk_webhook"
) -> Server:
    """Start `functions-framework` in its own process group and wait until it accepts requests."""
    port = emulator.free_port()
    log_path = tmp_path / f"server-{port}.log"
    command = [
        str(Path(sys.executable).with_name("functions-framework")),
        f"--target={target}",
        f"--source={source}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(url=f"http://127.0.0.1:{port}/", process=process, log_path=log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"functions-framework exited early:\n{server.log()}")
        try:
            urllib.request.urlopen(urllib.request.Request(server.url, method="GET"), timeout=1)
        except urllib.error.HTTPError:
            return server  # any HTTP answer (405, 500) means it is serving
        except OSError:
            time.sleep(0.1)
            continue
        return server
    stop_server(server)
    raise RuntimeError(f"functions-framework did not start in {SERVER_START_TIMEOUT_SECONDS}s:\n{server.log()}")


def stop_server(server: Server) -> None:
    """Stop the server's whole process group (gunicorn and its worker)."""
    emulator.stop(server.process)


@pytest.fixture
def server(db: firestore.Client, emulator_host: str, tmp_path: Path) -> Iterator[Server]:
    """The function served by a real functions-framework process against the emulator."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "THREADS": "8"}
    running = start_server(tmp_path, environment)
    try:
        yield running
    finally:
        stop_server(running)


# --- firebase_token (Clerk session token -> Firebase custom token) -----------------------------


@pytest.fixture(scope="session")
def token_service_account(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service-account key file generated for this run: firebase-admin signs with it locally."""
    import clerk_sessions  # noqa: PLC0415 (only the token tests need it)

    return clerk_sessions.write_service_account(tmp_path_factory.mktemp("service-account"), clerk_sessions.new_key())


@pytest.fixture
def token_environment(token_service_account: Path) -> Iterator[None]:
    """The exchange configured as deployed (test key, two origins, key file); fresh settings and app."""
    import clerk_sessions  # noqa: PLC0415

    # CLERK_SECRET_KEY too: a developer's .env may hold it (backfill); these tests verify with the PEM.
    optional = (
        "ALLOW_ANY_AUTHORIZED_PARTY",
        "ALLOW_MISSING_AZP",
        "ALLOW_PENDING_SESSIONS",
        "CLERK_ISSUER",
        "CLERK_TOKEN_LEEWAY_SECONDS",
    )
    for name in (*optional, "CLERK_SECRET_KEY", "CLERK_JWKS_URL"):
        os.environ.pop(name, None)
    os.environ.pop("FIREBASE_AUTH_EMULATOR_HOST", None)  # firebase-admin would mint unsigned tokens
    os.environ["CLERK_JWT_KEY"] = clerk_sessions.CLERK_PUBLIC_PEM
    os.environ["CLERK_AUTHORIZED_PARTIES"] = clerk_sessions.AUTHORIZED_PARTIES
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(token_service_account)
    fresh_exchange()
    try:
        yield
    finally:
        fresh_exchange()


def fresh_exchange() -> None:
    """The exchange as on a new instance: settings read again, a new firebase-admin app, nothing reused."""
    from clerk_sync import custom_token, firebase_auth, token_settings  # noqa: PLC0415

    token_settings.settings.cache_clear()
    firebase_auth.reset_app()
    custom_token.forget_minted()


@pytest.fixture(scope="session")
def auth_emulator_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Firebase Auth emulator (firebase-tools from node_modules), started once, only when a test needs it."""
    import auth_emulator  # noqa: PLC0415

    process, host = auth_emulator.start(tmp_path_factory.mktemp("auth-emulator"), PROJECT)
    try:
        yield host
    finally:
        emulator.stop(process)


# --- the docs' TypeScript (docs/reading-from-your-app.md), as `make docs-ts` writes it --------------

DOCS_TS = ROOT / "build" / "docs-ts"
TSX = ROOT / "node_modules" / ".bin" / "tsx"


CLIENT = ROOT / "client"
TSC = ROOT / "node_modules" / ".bin" / "tsc"
TSC_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="session")
def client_package() -> Path:
    """client/ built as `make client` builds it (tsc -p client: strict, dist/ with declarations), once a run.

    node_modules/clerk-firestore-sync links to it (package.json), so the docs' snippets and the app-side
    tests import the built package as an app does.
    """
    assert TSC.exists(), f"{TSC} is missing: run `make node-modules` (npm ci) first"
    command = [str(TSC), "-p", str(CLIENT)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TSC_TIMEOUT_SECONDS, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (ROOT / "node_modules" / "clerk-firestore-sync").resolve() == CLIENT, "run `make node-modules` (npm ci)"
    return CLIENT


@pytest.fixture(scope="session")
def docs_ts(client_package: Path) -> Path:
    """build/docs-ts/ with every TypeScript block of the docs as its file, as `make docs-ts` writes it.

    Inside the repository, so their imports find node_modules (the built client package among them); tsx
    runs them from there as they are.
    """
    from tools import snippets  # noqa: PLC0415

    assert TSX.exists(), f"{TSX} is missing: run `make node-modules` (npm ci) first"
    snippets.write(DOCS_TS)
    return DOCS_TS

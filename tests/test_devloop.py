"""`python -m clerk_sync dev` (what `make dev` runs) as a real process: start, serve, stop, refuse."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, Any

import emulator
import jwt
import pytest
from auth_emulator import sign_in_with_custom_token
from clerk_events import (
    membership_event,
    new_message_id,
    new_user_id,
    organization_event,
    signed_headers,
    user_event,
)
from conftest import ROOT, TSX
from dotenv import dotenv_values
from google.cloud import firestore
from loopback import deliver, send, serving

from clerk_sync import config
from tools import devloop, foreground, mint

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
TUNNEL = "https://fake-tunnel.ngrok-free.app"


class Output:
    """Collects a process's output lines in a thread, so waits on it stay bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def text(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> str:
        """All output so far once `needle` appears; fails with the output after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while needle not in "".join(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    pytest.fail(f"{needle!r} never appeared in:\n{''.join(self.lines)}")
                self.changed.wait(min(left, 0.5))
            return "".join(self.lines)


@contextmanager
def fake_ngrok_agent(port: int) -> Iterator[str]:
    """The local ngrok agent API (GET /api/tunnels) with one https tunnel to `port`."""
    body = json.dumps(
        {
            "tunnels": [
                {
                    "name": "command_line",
                    "public_url": TUNNEL,
                    "proto": "https",
                    "config": {"addr": f"http://localhost:{port}"},
                }
            ]
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/tunnels" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    with serving(Handler) as base:
        yield base


def dev_command(env_file: Path, ports: devloop.Ports, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "clerk_sync", "dev", "--env-file", str(env_file)]
    command += ["--port", str(ports.webhook), "--emulator-port", str(ports.firestore)]
    if ports.token is not None and ports.auth is not None:
        command += ["--token-port", str(ports.token), "--auth-port", str(ports.auth)]
    return [*command, *extra]


# What a developer's shell or .env could hold that would change what the loop does.
LOOP_VARIABLES = (
    *config.SECRET_VARIABLES,
    "PORT", "EMULATOR_PORT", "TOKEN_PORT", "AUTH_PORT",
    "CLERK_JWT_KEY", "CLERK_SECRET_KEY", "CLERK_AUTHORIZED_PARTIES", "ALLOW_ANY_AUTHORIZED_PARTY",
    "FIREBASE_AUTH_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
)  # fmt: skip


def environment_without_secret(**overrides: str) -> dict[str, str]:
    """The test environment minus the signing secret and the loop's settings, so the loop uses its own."""
    environment = {**os.environ, **overrides}
    for name in LOOP_VARIABLES:
        if name not in overrides:
            environment.pop(name, None)
    return environment


def process_group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_loop(process: subprocess.Popen[Any]) -> None:
    """A loop a test left running stops its own children first (their pids may not be printed yet);
    SIGKILL only if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def free_ports(*, webhook_only: bool = False) -> devloop.Ports:
    """Four different free ports (two with `webhook_only`): never the defaults someone's make dev holds."""
    chosen: list[int] = []
    while len(chosen) < 4:
        port = emulator.free_port()
        if port not in chosen:
            chosen.append(port)
    if webhook_only:
        return devloop.Ports(chosen[0], chosen[1], None, None)
    return devloop.Ports(*chosen)


@dataclass
class DevRun:
    """A running `python -m clerk_sync dev` and what its banner told us."""

    process: subprocess.Popen[str]
    output: Output
    ports: devloop.Ports
    env_file: Path
    banner: str
    child_groups: list[int]

    def wait_gone(self, timeout: float) -> bool:
        """Whether every child's process group is gone within `timeout`."""
        return groups_gone(self.child_groups, timeout)

    def ports_free(self) -> bool:
        """Whether nothing listens on any of the loop's ports any more."""
        ports = [port for port, _flag, _variable in self.ports.named().values()]
        return not any(map(foreground.port_taken, ports))


@contextmanager
def running_dev(tmp_path: Path, *extra: str, ports: devloop.Ports | None = None) -> Iterator[DevRun]:
    """Start the loop on free ports, wait for its whole banner; kill whatever is left at the end."""
    ports = ports or free_ports()
    env_file = tmp_path / ".env"
    process = subprocess.Popen(
        dev_command(env_file, ports, *extra),
        cwd=ROOT,
        env=environment_without_secret(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    child_groups: list[int] = []
    try:
        output.wait_for(f"webhook   http://127.0.0.1:{ports.webhook}/", START_TIMEOUT_SECONDS)
        banner = output.wait_for("answered 401 bad_signature).\n" + "-" * 78, 10)  # its last line
        child_groups += [int(pid) for pid in re.findall(r"\(pid (\d+);", banner)]
        yield DevRun(process, output, ports, env_file, banner, child_groups)
    finally:
        stop_loop(process)
        for group in child_groups:
            if process_group_alive(group):
                os.killpg(group, signal.SIGKILL)


def groups_gone(groups: list[int], timeout: float) -> bool:
    """Whether every one of these process groups is gone within `timeout`."""
    deadline = time.monotonic() + timeout
    while any(map(process_group_alive, groups)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(process_group_alive, groups))


def session_token(dev: DevRun, user_id: str, *options: str) -> tuple[str, str]:
    """`python3 -m clerk_sync session-token` as a person types it: (the token on stdout, stderr)."""
    minted = subprocess.run(
        [sys.executable, "-m", "clerk_sync", "session-token", user_id, "--env-file", str(dev.env_file), *options],
        cwd=ROOT,
        env=environment_without_secret(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return minted.stdout.strip(), minted.stderr


def firestore_get(host: str, path: str, id_token: str) -> int:
    """A client's REST read of one document with its Firebase ID token, as the rules see it: the status."""
    request = urllib.request.Request(
        f"http://{host}/v1/projects/{config.EMULATOR_PROJECT}/databases/(default)/documents/{path}",
        headers={"Authorization": f"Bearer {id_token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def test_dev_serves_the_whole_loop_and_ctrl_c_stops_every_process(tmp_path: Path, docs_ts: Path) -> None:
    ports = free_ports()
    with (
        fake_ngrok_agent(ports.webhook) as ngrok_api,
        running_dev(tmp_path, "--ngrok-api", ngrok_api, ports=ports) as dev,
    ):
        secret = dotenv_values(dev.env_file)["CLERK_WEBHOOK_SIGNING_SECRET"]
        assert secret is not None
        user_id, other_id, org_id = new_user_id(), new_user_id(), "org_2devloop"
        bodies = [user_event("user.created", who, emails=[f"{who.lower()}@example.com"]) for who in (user_id, other_id)]
        bodies += [
            organization_event("organization.created", org_id, name="Dev Loop Labs"),
            membership_event("organizationMembership.created", "orgmem_2devloop", org_id, user_id),
        ]
        for body in bodies:
            # Delivered as Svix does: a fresh emulator's first transactions can be slow on a busy machine.
            attempts = deliver(f"http://127.0.0.1:{ports.webhook}/", body, message_id=new_message_id(), secret=secret)
            assert attempts[-1] == "applied"
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{ports.firestore}"
        stored = firestore.Client(project=config.EMULATOR_PROJECT).collection("users").document(user_id)
        document = stored.get(timeout=10).to_dict()
        # The app's side: a minted session token, the exchange, the Auth emulator, then the rules.
        clerk_token, described = session_token(dev, user_id, "--org-id", org_id, "--role", "org:admin")
        exchanged = send(f"http://127.0.0.1:{ports.token}/", None, {"Authorization": f"Bearer {clerk_token}",
                         "Origin": "http://localhost:5173"}, timeout=15)  # fmt: skip
        status, signed_in = sign_in_with_custom_token(f"127.0.0.1:{ports.auth}", exchanged.json()["token"])
        own = firestore_get(f"127.0.0.1:{ports.firestore}", f"users/{user_id}", signed_in["idToken"])
        others = firestore_get(f"127.0.0.1:{ports.firestore}", f"users/{other_id}", signed_in["idToken"])
        # The docs' own client code (try-local.ts) as the banner says to run it.
        tried = subprocess.run(
            [str(TSX), str(docs_ts / "try-local.ts"), session_token(dev, user_id)[0]],
            cwd=ROOT,
            env={**environment_without_secret(), "TOKEN_URL": f"http://127.0.0.1:{ports.token}/",
                 "FIREBASE_AUTH_EMULATOR_HOST": f"127.0.0.1:{ports.auth}",
                 "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{ports.firestore}"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        log = dev.output.wait_for(f"component=token clerk_id={user_id}", 15)
        ngrok_hint = dev.output.wait_for(f"Endpoint URL):  {TUNNEL}/", 15)

        dev.process.send_signal(signal.SIGINT)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert document is not None
    assert document["email"] == f"{user_id.lower()}@example.com"
    assert f"created {dev.env_file}" in log.split("\n")[0]
    assert f"created {dev.env_file.with_name('clerk-dev-key.pem')}" in log
    assert dev.env_file.with_name("clerk-dev-key.pem").stat().st_mode & 0o077 == 0
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{32}", secret)
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert dev.env_file.stat().st_mode & 0o077 == 0
    assert exchanged.status == 200, exchanged.body
    allowed = {name.lower(): value for name, value in exchanged.headers.items()}["access-control-allow-origin"]
    assert allowed == "http://localhost:5173"  # any origin, locally
    assert status == 200, signed_in
    assert (own, others) == (200, 403)
    assert f"session token for {user_id}, organization {org_id} as admin" in described
    assert tried.returncode == 0, tried.stderr[-3000:]
    assert tried.stdout.splitlines() == [
        f"users/{user_id}: {user_id.lower()}@example.com, {document['first_name']} {document['last_name']}",
        f"member of {org_id} (Dev Loop Labs) as org:member",
        "signed out",
    ]
    assert "INFO    200 custom token minted" in log
    assert clerk_token not in dev.output.text()
    assert f"ngrok tunnel found: {TUNNEL} -> http://127.0.0.1:{ports.webhook}" in ngrok_hint
    assert f"ngrok http {ports.webhook}" in dev.banner
    assert "user.*, organization.*," in dev.banner
    assert "subscription.*, subscriptionItem.*," in dev.banner
    assert "python3 -m clerk_sync send user.created" in dev.banner
    assert f"token     http://127.0.0.1:{ports.token}/" in dev.banner
    assert f"auth      127.0.0.1:{ports.auth}" in dev.banner
    assert f"TOKEN_URL=http://127.0.0.1:{ports.token}/" in dev.banner
    assert "INFO    200 user.created applied" in log
    assert "example.com" not in log
    assert code == 0
    assert len(dev.child_groups) == 4
    assert dev.wait_gone(timeout=5)
    assert dev.ports_free()
    assert dev.output.text().rstrip().endswith("dev | stopped")


def test_dev_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        dev.process.send_signal(signal.SIGTERM)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 0
    assert (
        "SIGTERM: stopping the token function, the webhook function, the Auth emulator and the Firestore emulator"
        in dev.output.text()
    )
    assert len(dev.child_groups) == 4
    assert dev.wait_gone(timeout=5)


def test_dev_stops_every_process_when_its_terminal_hangs_up(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        dev.process.send_signal(signal.SIGHUP)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 0
    assert "SIGHUP: stopping the token function" in dev.output.text()
    assert len(dev.child_groups) == 4
    assert dev.wait_gone(timeout=5)
    assert dev.ports_free()


@contextmanager
def dev_writing_to_a_pipe(
    tmp_path: Path, stderr: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[int], int]]:
    """The loop with its output into a pipe whose read end the test holds; (process, reader, groups, port)."""
    ports = free_ports()
    reader, writer = os.pipe()
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            dev_command(tmp_path / ".env", ports),
            cwd=ROOT,
            env=environment_without_secret(),
            stdout=writer,
            stderr=errors,
            start_new_session=True,
        )
    os.close(writer)
    groups: list[int] = []
    try:
        seen = b""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while b"Real Clerk events" not in seen and time.monotonic() < deadline:
            chunk = os.read(reader, 65536)
            if not chunk:
                break
            seen += chunk
        groups += [int(pid) for pid in re.findall(rb"\(pid (\d+);", seen)]
        yield process, reader, groups, ports.webhook
    finally:
        with contextlib.suppress(OSError):
            os.close(reader)
        stop_loop(process)
        for group in groups:
            if process_group_alive(group):
                os.killpg(group, signal.SIGKILL)


def test_dev_stops_every_process_when_its_output_pipe_closed_before_ctrl_c(tmp_path: Path) -> None:
    # `make dev 2>&1 | tee log`, then Ctrl-C: tee is gone first, so every later write fails.
    errors = tmp_path / "stderr.txt"
    with dev_writing_to_a_pipe(tmp_path, errors) as (process, reader, groups, _port):
        os.close(reader)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert len(groups) == 4
    assert code == 0
    assert groups_gone(groups, timeout=5)
    assert "Traceback" not in errors.read_text()


def test_dev_stops_every_process_when_nobody_reads_its_output_any_more(tmp_path: Path) -> None:
    errors = tmp_path / "stderr.txt"
    with dev_writing_to_a_pipe(tmp_path, errors) as (process, reader, groups, port):
        os.close(reader)
        # No signal: the function's log line for this request is the write that fails.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert len(groups) == 4
    assert code == 0
    assert groups_gone(groups, timeout=5)
    assert "Traceback" not in errors.read_text()


@pytest.mark.parametrize(("dies", "title"), [(0, "the webhook function"), (3, "the Auth emulator")])
def test_dev_stops_the_others_when_one_process_dies(tmp_path: Path, dies: int, title: str) -> None:
    with running_dev(tmp_path) as dev:
        os.killpg(dev.child_groups[dies], signal.SIGKILL)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 1
    assert f"{title} exited (code -9); stopping the others" in dev.output.text()
    assert dev.wait_gone(timeout=5)
    assert dev.ports_free()


def test_dev_refuses_a_taken_port_and_names_it(tmp_path: Path) -> None:
    ports = free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", ports.auth or 0))
        squatter.listen()

        finished = subprocess.run(
            dev_command(tmp_path / ".env", ports),
            cwd=ROOT,
            env=environment_without_secret(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert finished.returncode == 1
    assert f"port {ports.auth} (the Auth emulator) is already in use on 127.0.0.1" in finished.stderr
    assert f"`make dev AUTH_PORT={(ports.auth or 0) + 100}`" in finished.stderr
    assert f"--auth-port {(ports.auth or 0) + 100}" in finished.stderr
    assert f"port {ports.webhook}" not in finished.stderr
    assert "firestore |" not in finished.stdout  # nothing was started


def test_suggested_ports_stay_clear_of_every_default_of_the_loop() -> None:
    defaults = devloop.Ports()
    used = {port for port, _flag, _variable in defaults.named().values()} | {4040}  # and ngrok's agent API
    squatted = []
    for port in sorted(used):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                probe.bind(("127.0.0.1", port))
                probe.listen()
                squatted.append(probe.dup())

    try:
        messages = devloop.taken_ports(defaults.named())
    finally:
        for probe in squatted:
            probe.close()

    suggested = {int(port) for message in messages for port in re.findall(r"=(\d+)`", message)}
    assert suggested
    assert not suggested & used


def test_dev_refuses_when_the_ports_come_from_the_environment_and_are_taken(tmp_path: Path) -> None:
    ports = free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", ports.token or 0))
        squatter.listen()

        finished = subprocess.run(
            [sys.executable, "-m", "clerk_sync", "dev", "--env-file", str(tmp_path / ".env")],
            cwd=ROOT,
            env=environment_without_secret(
                PORT=str(ports.webhook),
                EMULATOR_PORT=str(ports.firestore),
                TOKEN_PORT=str(ports.token),
                AUTH_PORT=str(ports.auth),
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert finished.returncode == 1
    assert f"port {ports.token} (the token function) is already in use" in finished.stderr


def test_dev_says_which_prerequisites_are_missing_and_how_to_install_them(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()

    finished = subprocess.run(
        dev_command(tmp_path / ".env", free_ports()),
        cwd=ROOT,
        env=environment_without_secret(PATH=str(empty)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "gcloud is not on PATH" in finished.stderr
    assert "sudo apt-get install google-cloud-cli" in finished.stderr
    assert "java is not on PATH" in finished.stderr
    assert "openjdk-21-jre-headless" in finished.stderr
    assert "node is not on PATH" in finished.stderr
    assert "python3 -m clerk_sync dev --webhook-only" in finished.stderr


def test_dev_names_a_missing_emulator_component_and_webhook_only_needs_no_node(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    (sdk / "bin").mkdir(parents=True)
    gcloud = sdk / "bin" / "gcloud"
    gcloud.write_text(f'#!/bin/sh\n[ "$1" = info ] && echo {sdk}\nexit 0\n')
    gcloud.chmod(0o755)
    java = subprocess.run(["sh", "-c", "command -v java"], capture_output=True, text=True, timeout=10, check=True)
    (sdk / "bin" / "java").symlink_to(Path(java.stdout.strip()).resolve())

    finished = subprocess.run(
        dev_command(tmp_path / ".env", free_ports(webhook_only=True), "--webhook-only"),
        cwd=ROOT,
        env=environment_without_secret(PATH=str(sdk / "bin")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "the Firestore emulator component of gcloud is missing" in finished.stderr
    assert "sudo apt-get install google-cloud-cli-firestore-emulator" in finished.stderr
    assert "gcloud components install cloud-firestore-emulator" in finished.stderr
    assert "java" not in finished.stderr
    assert "node" not in finished.stderr
    assert not (tmp_path / "clerk-dev-key.pem").exists()  # no token function, no key


def test_env_file_is_created_from_the_example_with_a_fresh_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.env", tmp_path / "second.env"

    devloop.ensure_env_file(first, sys.stdout)
    devloop.ensure_env_file(second, sys.stdout)

    secrets = [dotenv_values(path)["CLERK_WEBHOOK_SIGNING_SECRET"] for path in (first, second)]
    assert secrets[0] != secrets[1]
    assert all(secret and secret.startswith("whsec_") and secret != devloop.PLACEHOLDER_SECRET for secret in secrets)
    assert "CLERK_SECRET_KEY" in first.read_text()  # the rest of .env.example came along
    assert f"created {first}" in capsys.readouterr().out


def test_env_file_placeholder_is_replaced_and_a_real_secret_kept(tmp_path: Path) -> None:
    placeholder, real = tmp_path / "placeholder.env", tmp_path / "real.env"
    placeholder.write_text("CLERK_WEBHOOK_SIGNING_SECRET=whsec_REPLACE_ME\nOTHER=1\n")
    real.write_text("CLERK_WEBHOOK_SIGNING_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")

    devloop.ensure_env_file(placeholder, sys.stdout)
    devloop.ensure_env_file(real, sys.stdout)

    replaced = dotenv_values(placeholder)
    assert replaced["CLERK_WEBHOOK_SIGNING_SECRET"] != devloop.PLACEHOLDER_SECRET
    assert replaced["OTHER"] == "1"
    assert real.read_text() == "CLERK_WEBHOOK_SIGNING_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"


def test_the_documented_cp_env_example_path_starts_and_makes_env_private(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    env_file.chmod(0o644)  # what `cp .env.example .env` leaves

    with running_dev(tmp_path) as dev:
        secret = dotenv_values(env_file)["CLERK_WEBHOOK_SIGNING_SECRET"]
        assert secret is not None
        body = user_event("user.created", new_user_id())
        request = urllib.request.Request(
            f"http://127.0.0.1:{dev.ports.webhook}/",
            data=body.encode(),
            headers=signed_headers(body, secret=secret),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            answer = json.load(response)
        dev.process.send_signal(signal.SIGINT)
        dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert "replaced the placeholder secret" in dev.banner
    assert secret != devloop.PLACEHOLDER_SECRET
    assert answer == {"outcome": "applied"}
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_env_file_is_private_from_its_first_byte_whatever_the_umask(tmp_path: Path) -> None:
    created, replaced, loose = tmp_path / "new.env", tmp_path / "placeholder.env", tmp_path / "loose.env"
    replaced.write_text("CLERK_WEBHOOK_SIGNING_SECRET=whsec_REPLACE_ME\n")
    loose.write_text("CLERK_WEBHOOK_SIGNING_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    loose.chmod(0o644)
    previous = os.umask(0)
    try:
        for path in (created, replaced, loose):
            devloop.ensure_env_file(path, sys.stdout)
    finally:
        os.umask(previous)

    assert [path.stat().st_mode & 0o777 for path in (created, replaced, loose)] == [0o600] * 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loose.env", "new.env", "placeholder.env"]


def test_function_log_lines_are_shown_short_and_other_lines_unchanged() -> None:
    line = json.dumps(
        {
            "severity": "WARNING",
            "message": "signature rejected: bad_signature",
            "svix_id": None,
            "reason": "bad_signature",
            "outcome": "rejected",
            "status": 401,
            "latency_ms": 1.5,
        }
    )
    shown = foreground.readable(line)

    assert shown == "WARNING 401 signature rejected: bad_signature  reason=bad_signature (1.5 ms)"
    assert foreground.readable("[INFO] Booting worker") == "[INFO] Booting worker"
    assert foreground.emulator_line("INFO: Detected HTTP/2 connection.") is None


def test_dev_refuses_a_secret_that_is_not_a_whsec_value_before_starting_anything(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CLERK_WEBHOOK_SIGNING_SECRET=sk_test_pastedTheApiKeyByMistake0000\n")
    ports = free_ports()

    finished = subprocess.run(
        dev_command(env_file, ports),
        cwd=ROOT,
        env=environment_without_secret(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "CLERK_WEBHOOK_SIGNING_SECRET is not a valid whsec_ signing secret" in finished.stderr
    assert f"from {env_file}: for a fresh local secret, empty that line (or delete {env_file})" in finished.stderr
    assert "sk_test_" not in finished.stderr + finished.stdout
    assert not foreground.port_taken(ports.firestore)


def test_dev_says_when_the_unusable_secret_comes_from_the_environment(tmp_path: Path) -> None:
    finished = subprocess.run(
        dev_command(tmp_path / ".env", free_ports()),
        cwd=ROOT,
        env=environment_without_secret(CLERK_WEBHOOK_SIGNING_SECRET="sk_test_abc123"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "from the environment, which wins over" in finished.stderr
    assert "unset CLERK_WEBHOOK_SIGNING_SECRET for the one in" in finished.stderr


def test_an_emptied_secret_in_env_is_replaced_with_a_fresh_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emptied, quoted, older_name = tmp_path / "emptied.env", tmp_path / "quoted.env", tmp_path / "older.env"
    emptied.write_text("CLERK_WEBHOOK_SIGNING_SECRET=\nCLERK_SECRET_KEY=sk_test_kept\n")
    quoted.write_text('CLERK_WEBHOOK_SIGNING_SECRET=""\n')
    older_name.write_text("CLERK_WEBHOOK_SIGNING_SECRET=\nWEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")

    for path in (emptied, quoted, older_name):
        devloop.ensure_env_file(path, sys.stdout)

    fresh = [dotenv_values(path)["CLERK_WEBHOOK_SIGNING_SECRET"] or "" for path in (emptied, quoted)]
    assert all(re.fullmatch(r"whsec_[A-Za-z0-9+/]{32}", secret) for secret in fresh)
    assert dotenv_values(emptied)["CLERK_SECRET_KEY"] == "sk_test_kept"
    assert dotenv_values(older_name)["CLERK_WEBHOOK_SIGNING_SECRET"] == ""  # WEBHOOK_SECRET still holds one
    assert capsys.readouterr().out.count("replaced the empty secret in") == 2


def test_session_token_is_a_clerk_v2_session_token_signed_with_the_development_key(tmp_path: Path) -> None:
    key = tmp_path / "clerk-dev-key.pem"
    mint.ensure_key(key, sys.stdout)
    claims = mint.session_claims(
        "user_2abc",
        organization=mint.Organization("org_2xyz", role="org:billing_manager", slug="acme"),
        now=1_800_000_000,
    )

    token = mint.mint(key, claims)

    header = jwt.get_unverified_header(token)
    verified = jwt.decode(
        token,
        mint.public_pem(key),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert header["alg"] == "RS256"
    assert header["typ"] == "JWT"
    assert header["kid"].startswith("ins_")
    assert set(verified) == {"azp", "exp", "fva", "iat", "iss", "jti", "nbf", "o", "sid", "sts", "sub", "v"}
    assert verified["exp"] - verified["iat"] == 60
    assert verified["nbf"] < verified["iat"]
    assert verified["v"] == 2
    assert verified["sid"].startswith("sess_")
    assert verified["azp"] == "http://localhost:3000"
    assert verified["o"] == {"id": "org_2xyz", "rol": "billing_manager", "slg": "acme", "per": "read,manage"}
    assert "o" not in mint.session_claims("user_2abc")
    assert key.stat().st_mode & 0o077 == 0


def test_session_token_warns_when_the_loop_verifies_with_another_key(tmp_path: Path) -> None:
    key = tmp_path / "clerk-dev-key.pem"
    other = tmp_path / "other" / "clerk-dev-key.pem"
    other.parent.mkdir()
    mint.ensure_key(key, sys.stdout)
    mint.ensure_key(other, sys.stdout)

    os.environ["CLERK_JWT_KEY"] = mint.public_pem(key)
    same = mint.verifier_mismatch(key)
    os.environ["CLERK_JWT_KEY"] = mint.public_pem(other).replace("\n", "\\n")  # as pasted into .env
    different = mint.verifier_mismatch(key)

    assert same is None
    assert different is not None
    assert "refuses this token (401 bad_signature)" in different

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
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, Any

import emulator
import pytest
from clerk_events import new_message_id, new_user_id, signed_headers, user_event
from conftest import ROOT
from dotenv import dotenv_values
from google.cloud import firestore
from loopback import deliver, serving

from clerk_sync import config
from tools import devloop

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


def dev_command(env_file: Path, function_port: int, emulator_port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clerk_sync",
        "dev",
        "--env-file",
        str(env_file),
        "--port",
        str(function_port),
        "--emulator-port",
        str(emulator_port),
        *extra,
    ]


def environment_without_secret(**overrides: str) -> dict[str, str]:
    """The test environment minus the signing secret, so the loop must use the one it generates."""
    environment = {**os.environ, **overrides}
    for name in (*config.SECRET_VARIABLES, "PORT", "EMULATOR_PORT"):
        environment.pop(name, None)
    return environment


def process_group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def two_free_ports() -> tuple[int, int]:
    first = emulator.free_port()
    second = emulator.free_port()
    while second == first:
        second = emulator.free_port()
    return first, second


@dataclass
class DevRun:
    """A running `python -m clerk_sync dev` and what its banner told us."""

    process: subprocess.Popen[str]
    output: Output
    function_port: int
    emulator_port: int
    env_file: Path
    banner: str
    child_groups: list[int]

    def wait_gone(self, timeout: float) -> bool:
        """Whether both children's process groups are gone within `timeout`."""
        deadline = time.monotonic() + timeout
        while any(map(process_group_alive, self.child_groups)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not any(map(process_group_alive, self.child_groups))


@contextmanager
def running_dev(tmp_path: Path, *extra: str, ports: tuple[int, int] | None = None) -> Iterator[DevRun]:
    """Start the loop on free ports, wait for its banner; kill whatever is left at the end."""
    function_port, emulator_port = ports or two_free_ports()
    env_file = tmp_path / ".env"
    process = subprocess.Popen(
        dev_command(env_file, function_port, emulator_port, *extra),
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
        banner = output.wait_for(f"function  http://127.0.0.1:{function_port}/", START_TIMEOUT_SECONDS)
        child_groups += [int(pid) for pid in re.findall(r"\(pid (\d+);", banner)]
        yield DevRun(process, output, function_port, emulator_port, env_file, banner, child_groups)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        for group in child_groups:
            if process_group_alive(group):
                os.killpg(group, signal.SIGKILL)


def test_dev_serves_the_function_on_its_own_emulator_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    ports = two_free_ports()
    with fake_ngrok_agent(ports[0]) as ngrok_api, running_dev(tmp_path, "--ngrok-api", ngrok_api, ports=ports) as dev:
        secret = dotenv_values(dev.env_file)["CLERK_WEBHOOK_SIGNING_SECRET"]
        assert secret is not None
        user_id = new_user_id()
        body = user_event("user.created", user_id, emails=["dev-loop@example.com"])
        # Delivered as Svix does: a fresh emulator's first transactions can be slow on a busy machine.
        attempts = deliver(f"http://127.0.0.1:{dev.function_port}/", body, message_id=new_message_id(), secret=secret)
        answer = {"outcome": attempts[-1]}
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{dev.emulator_port}"
        stored = firestore.Client(project=config.EMULATOR_PROJECT).collection("users").document(user_id)
        document = stored.get(timeout=10).to_dict()
        log = dev.output.wait_for(f"clerk_id={user_id}", 15)
        ngrok_hint = dev.output.wait_for(f"Endpoint URL):  {TUNNEL}/", 15)

        dev.process.send_signal(signal.SIGINT)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert answer == {"outcome": "applied"}
    assert document is not None
    assert document["email"] == "dev-loop@example.com"
    assert f"created {dev.env_file}" in log.split("\n")[0]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{32}", secret)
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert dev.env_file.stat().st_mode & 0o077 == 0
    assert f"ngrok tunnel found: {TUNNEL} -> http://127.0.0.1:{dev.function_port}" in ngrok_hint
    assert f"ngrok http {dev.function_port}" in dev.banner
    assert "user.*, organization.* and" in dev.banner
    assert "python3 -m clerk_sync send user.created" in dev.banner
    assert "INFO    200 user.created applied" in log
    assert "dev-loop@example.com" not in log
    assert code == 0
    assert len(dev.child_groups) == 2
    assert dev.wait_gone(timeout=5)
    assert not devloop.port_taken(dev.function_port)
    assert not devloop.port_taken(dev.emulator_port)
    assert dev.output.text().rstrip().endswith("dev | stopped")


def test_dev_stops_both_on_sigterm(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        dev.process.send_signal(signal.SIGTERM)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 0
    assert "SIGTERM: stopping the function and the emulator" in dev.output.text()
    assert dev.wait_gone(timeout=5)


def test_dev_stops_both_when_its_terminal_hangs_up(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        dev.process.send_signal(signal.SIGHUP)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 0
    assert "SIGHUP: stopping the function and the emulator" in dev.output.text()
    assert dev.wait_gone(timeout=5)
    assert not devloop.port_taken(dev.function_port)


def groups_gone(groups: list[int], timeout: float) -> bool:
    """Whether every one of these process groups is gone within `timeout`."""
    deadline = time.monotonic() + timeout
    while any(map(process_group_alive, groups)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(process_group_alive, groups))


@contextmanager
def dev_writing_to_a_pipe(
    tmp_path: Path, stderr: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[int], int]]:
    """The loop with its output into a pipe whose read end the test holds; (process, reader, groups, port)."""
    function_port, emulator_port = two_free_ports()
    reader, writer = os.pipe()
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            dev_command(tmp_path / ".env", function_port, emulator_port),
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
        yield process, reader, groups, function_port
    finally:
        with contextlib.suppress(OSError):
            os.close(reader)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        for group in groups:
            if process_group_alive(group):
                os.killpg(group, signal.SIGKILL)


def test_dev_stops_both_when_its_output_pipe_closed_before_ctrl_c(tmp_path: Path) -> None:
    # `make dev 2>&1 | tee log`, then Ctrl-C: tee is gone first, so every later write fails.
    errors = tmp_path / "stderr.txt"
    with dev_writing_to_a_pipe(tmp_path, errors) as (process, reader, groups, _port):
        os.close(reader)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert len(groups) == 2
    assert code == 0
    assert groups_gone(groups, timeout=5)
    assert "Traceback" not in errors.read_text()


def test_dev_stops_both_when_nobody_reads_its_output_any_more(tmp_path: Path) -> None:
    errors = tmp_path / "stderr.txt"
    with dev_writing_to_a_pipe(tmp_path, errors) as (process, reader, groups, port):
        os.close(reader)
        # No signal: the function's log line for this request is the write that fails.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert len(groups) == 2
    assert code == 0
    assert groups_gone(groups, timeout=5)
    assert "Traceback" not in errors.read_text()


def test_dev_stops_the_emulator_when_the_function_dies(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        function_group = dev.child_groups[0]
        os.killpg(function_group, signal.SIGKILL)
        code = dev.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    assert code == 1
    assert "the function exited (code -9); stopping the other" in dev.output.text()
    assert dev.wait_gone(timeout=5)
    assert not devloop.port_taken(dev.emulator_port)


def test_dev_refuses_a_taken_port_and_names_it(tmp_path: Path) -> None:
    function_port, emulator_port = two_free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", emulator_port))
        squatter.listen()

        finished = subprocess.run(
            dev_command(tmp_path / ".env", function_port, emulator_port),
            cwd=ROOT,
            env=environment_without_secret(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert finished.returncode == 1
    assert f"port {emulator_port} (the Firestore emulator) is already in use on 127.0.0.1" in finished.stderr
    assert f"`make dev EMULATOR_PORT={emulator_port + 10}`" in finished.stderr
    assert f"--emulator-port {emulator_port + 10}" in finished.stderr
    assert f"port {function_port}" not in finished.stderr
    assert "emulator |" not in finished.stdout  # nothing was started


def test_dev_refuses_when_the_ports_come_from_the_environment_and_are_taken(tmp_path: Path) -> None:
    port = emulator.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

        finished = subprocess.run(
            [sys.executable, "-m", "clerk_sync", "dev", "--env-file", str(tmp_path / ".env")],
            cwd=ROOT,
            env={**environment_without_secret(), "PORT": str(port), "EMULATOR_PORT": str(emulator.free_port())},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert finished.returncode == 1
    assert f"port {port} (the function) is already in use" in finished.stderr


def test_dev_says_which_prerequisites_are_missing_and_how_to_install_them(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    function_port, emulator_port = two_free_ports()

    finished = subprocess.run(
        dev_command(tmp_path / ".env", function_port, emulator_port),
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


def test_dev_names_a_missing_emulator_component(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    (sdk / "bin").mkdir(parents=True)
    gcloud = sdk / "bin" / "gcloud"
    gcloud.write_text(f'#!/bin/sh\n[ "$1" = info ] && echo {sdk}\nexit 0\n')
    gcloud.chmod(0o755)
    java = subprocess.run(["sh", "-c", "command -v java"], capture_output=True, text=True, timeout=10, check=True)
    (sdk / "bin" / "java").symlink_to(Path(java.stdout.strip()).resolve())
    function_port, emulator_port = two_free_ports()

    finished = subprocess.run(
        dev_command(tmp_path / ".env", function_port, emulator_port),
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
            f"http://127.0.0.1:{dev.function_port}/",
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
    shown = devloop.readable(line)

    assert shown == "WARNING 401 signature rejected: bad_signature  reason=bad_signature (1.5 ms)"
    assert devloop.readable("[INFO] Booting worker") == "[INFO] Booting worker"
    assert devloop.emulator_line("INFO: Detected HTTP/2 connection.") is None


def test_dev_refuses_a_secret_that_is_not_a_whsec_value_before_starting_anything(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CLERK_WEBHOOK_SIGNING_SECRET=sk_test_pastedTheApiKeyByMistake0000\n")
    function_port, emulator_port = two_free_ports()

    finished = subprocess.run(
        dev_command(env_file, function_port, emulator_port),
        cwd=ROOT,
        env=environment_without_secret(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "CLERK_WEBHOOK_SIGNING_SECRET is not a valid whsec_ signing secret" in finished.stderr
    assert "sk_test_" not in finished.stderr + finished.stdout
    assert not devloop.port_taken(emulator_port)

"""Start, probe, wipe and stop the real Firestore emulator from the gcloud CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(host: str, timeout: float = 1.0) -> bool:
    """Whether the emulator at `host` (`127.0.0.1:PORT`) answers its health check."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start(rules: Path | None, log_path: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start an emulator on `port` (or a free one) in its own process group; raise if it never answers."""
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    command = ["gcloud", "emulators", "firestore", "start", f"--host-port={host}"]
    if rules is not None:
        command.append(f"--rules={rules}")
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if answers(host):
            return process, host
        if process.poll() is not None:
            break
        time.sleep(0.25)
    stop(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Firestore emulator did not answer on {host} (needs gcloud + Java):\n{tail}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the emulator and its Java child by process group, politely, then firmly."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # Members that outlived the leader (the Java child of gcloud's wrapper) go too.
        os.killpg(process.pid, signal.SIGKILL)


WIPE_ATTEMPTS = 3


def wipe(host: str, project: str) -> None:
    """Delete every document of `project` in the emulator (between tests).

    The emulator keeps some document listeners of a client that has gone (the JS SDK's, after a sign-out
    ended them or the process exited) and fails the next commit that touches their document while it
    notifies them: 500 or 499 ("Stream is already completed", "call already cancelled"). That failed
    attempt drops them, so the wipe is tried again.
    """
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    for attempt in range(1, WIPE_ATTEMPTS + 1):
        request = urllib.request.Request(url, method="DELETE")
        try:
            # Generous but bounded: a fresh emulator's first wipe is slow on a busy two-core machine.
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
                return
        except urllib.error.HTTPError as error:
            error.close()
            if error.code not in {499, 500} or attempt == WIPE_ATTEMPTS:
                raise


def load_rules(host: str, project: str, rules_text: str) -> None:
    """Replace the emulator's security rules for `project` (400 if they do not compile)."""
    body = json.dumps({"rules": {"files": [{"name": "firestore.rules", "content": rules_text}]}}).encode()
    request = urllib.request.Request(
        f"http://{host}/emulator/v1/projects/{project}:securityRules",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

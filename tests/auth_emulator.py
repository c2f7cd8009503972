"""Start and probe the real Firebase Auth emulator (firebase-tools, installed by `make node_modules`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import emulator

ROOT = Path(__file__).resolve().parent.parent
FIREBASE = ROOT / "node_modules" / ".bin" / "firebase"
START_TIMEOUT_SECONDS = 90.0  # about 11-20 s here; the machine may be busy with another suite
REQUEST_TIMEOUT_SECONDS = 10.0


def is_ready(host: str, timeout: float = 1.0) -> bool:
    """Whether the Auth emulator at `host` answers its status page with `ready: true`."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as response:
            return bool(json.loads(response.read()).get("authEmulator", {}).get("ready"))
    except (OSError, ValueError):
        return False


def write_config(directory: Path, port: int) -> Path:
    """A firebase.json with only the Auth emulator on `port`; the hub and logging ports free ones too,
    so two runs on one machine (another engineer's suite) never collide on firebase-tools' defaults."""
    path = directory / "firebase.json"
    path.write_text(
        json.dumps(
            {
                "emulators": {
                    "auth": {"host": "127.0.0.1", "port": port},
                    "hub": {"host": "127.0.0.1", "port": emulator.free_port()},
                    "logging": {"host": "127.0.0.1", "port": emulator.free_port()},
                    "ui": {"enabled": False},
                    "singleProjectMode": True,
                }
            }
        )
    )
    return path


def start(directory: Path, project: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator in its own process group (cwd `directory`, where it writes its logs); raise
    with the log's tail if it does not become ready in time."""
    if not FIREBASE.exists():
        raise RuntimeError(f"{FIREBASE} is missing: run `make node-modules` (npm ci) first")
    port = emulator.free_port()
    host = f"127.0.0.1:{port}"
    config = write_config(directory, port)
    log_path = directory / "auth-emulator.log"
    command = [str(FIREBASE), "emulators:start", "--only", "auth", "--project", project, "--config", str(config)]
    environment = {**os.environ, "NO_UPDATE_NOTIFIER": "1", "CI": "true"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_SECONDS:
        if is_ready(host):
            (directory / "startup-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
            return process, host
        if process.poll() is not None:
            break
        time.sleep(0.25)
    emulator.stop(process)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"Firebase Auth emulator did not become ready on {host}:\n{tail}")


def post_json(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST JSON with a bounded timeout; the status and the decoded answer (errors included)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def sign_in_with_custom_token(host: str, custom_token: str) -> tuple[int, dict[str, Any]]:
    """What the app's Firebase SDK does with the custom token: the emulator answers an ID token."""
    url = f"http://{host}/identitytoolkit.googleapis.com/v1/accounts:signInWithCustomToken?key=any"
    return post_json(url, {"token": custom_token, "returnSecureToken": True})

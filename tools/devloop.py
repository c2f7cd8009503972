"""`make dev`: the Firestore emulator and the function on localhost, in the foreground, stopped together.

Each child runs in its own process group, so stopping one stops everything it started (gcloud's
Java emulator, gunicorn's workers), and a Ctrl-C reaches only us: we decide the order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

from dotenv import dotenv_values

from clerk_sync import config
from tools.common import (
    DEFAULT_EMULATOR_PORT,
    DEFAULT_FUNCTION_PORT,
    ROOT,
    emulator_answers,
)

__all__ = ["ensure_env_file", "missing_prerequisites", "new_signing_secret", "run", "taken_ports"]

PROBE_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
NGROK_POLL_SECONDS = 2.0
PLACEHOLDER_SECRET = "whsec_REPLACE_ME"  # noqa: S105 (the placeholder in .env.example)
EMULATOR_CHATTER = re.compile(r"HttpVersionRoutingHandler channelRead|INFO: Detected (non-)?HTTP/2 connection")
SECRET_LINE = re.compile(r"^(CLERK_WEBHOOK_SIGNING_SECRET=).*$", re.MULTILINE)
INSTALL_GCLOUD = (
    "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install "
    "(Debian/Ubuntu: sudo apt-get install google-cloud-cli; macOS: brew install --cask google-cloud-sdk)"
)
INSTALL_EMULATOR = (
    "install it with `sudo apt-get install google-cloud-cli-firestore-emulator` (apt installs) "
    "or `gcloud components install cloud-firestore-emulator` (installer / Homebrew installs)"
)
INSTALL_JAVA = (
    "the emulator is a Java program: sudo apt-get install openjdk-21-jre-headless "
    "(or openjdk-17-jre-headless where 21 is not packaged; gcloud after 528 wants 21; "
    "macOS: brew install openjdk@21), then check `java -version`"
)


def new_signing_secret() -> str:
    """A fresh `whsec_` secret: base64 of 24 random bytes, the shape Svix issues."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, from the first byte (it holds a secret)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def ensure_env_file(env_file: Path, out: TextIO) -> None:
    """Create `.env` from `.env.example` with a fresh secret, fill in a placeholder, keep it private."""
    if not env_file.exists():
        example = ROOT / ".env.example"
        template = example.read_text() if example.is_file() else "CLERK_WEBHOOK_SIGNING_SECRET=\n"
        text, replaced = SECRET_LINE.subn(rf"\g<1>{new_signing_secret()}", template, count=1)
        if not replaced:
            text += f"CLERK_WEBHOOK_SIGNING_SECRET={new_signing_secret()}\n"
        _write_private(env_file, text)
        out.write(f"created {shown(env_file)} with a fresh local signing secret (never commit it)\n")
        return
    text = env_file.read_text()
    if f"CLERK_WEBHOOK_SIGNING_SECRET={PLACEHOLDER_SECRET}" in text:
        fresh = new_signing_secret()
        _write_private(env_file, SECRET_LINE.sub(rf"\g<1>{fresh}", text, count=1))
        if os.environ.get("CLERK_WEBHOOK_SIGNING_SECRET", "").strip() == PLACEHOLDER_SECRET:
            os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = fresh  # loaded from the file before we replaced it
        out.write(f"replaced the placeholder secret in {shown(env_file)} with a fresh local one\n")
    elif env_file.stat().st_mode & 0o077:
        env_file.chmod(0o600)
        out.write(f"made {shown(env_file)} readable by you only (it holds secrets)\n")


def _runs(command: list[str]) -> bool:
    try:
        subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _sdk_roots(gcloud: str) -> list[Path]:
    """Where `gcloud info` says the SDK lives (for installs where `gcloud` is a wrapper script)."""
    roots = []
    try:
        answer = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=True,
        )
        if answer.stdout.strip():
            roots.append(Path(answer.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return roots


def _emulator_installed(gcloud: str) -> bool:
    """The emulator is a jar inside the SDK; looking for it is instant, unlike starting it."""
    jar = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
    if (Path(gcloud).resolve().parent.parent / jar).is_file():
        return True
    return any((root / jar).is_file() for root in _sdk_roots(gcloud))


def missing_prerequisites() -> list[str]:
    """What the local loop needs and is not installed, each with how to install it."""
    problems = []
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        problems.append(f"gcloud is not on PATH: {INSTALL_GCLOUD}")
    elif not _emulator_installed(gcloud):
        problems.append(f"the Firestore emulator component of gcloud is missing: {INSTALL_EMULATOR}")
    java = shutil.which("java")
    if java is None:
        problems.append(f"java is not on PATH: {INSTALL_JAVA}")
    elif not _runs([java, "-version"]):
        problems.append(f"`java -version` fails: {INSTALL_JAVA}")
    return problems


def port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port` (or on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def taken_ports(ports: dict[str, tuple[int, str, str]]) -> list[str]:
    """A message per port in use (name -> (port, flag, variable)), with how to pick another."""
    return [
        f"port {port} ({name}) is already in use on 127.0.0.1. Stop what listens there "
        f"(`lsof -iTCP:{port} -sTCP:LISTEN` or `ss -ltnp 'sport = :{port}'` shows it), or choose another: "
        f"`make dev {variable}={port + 10}` or `python3 -m clerk_sync dev {flag} {port + 10}`"
        for name, (port, flag, variable) in ports.items()
        if port_taken(port)
    ]


@dataclass
class Child:
    """One foreground process with a log prefix."""

    name: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread | None = field(default=None)


class Console:
    """Prefixed, line-at-a-time output shared by the log pumps and the banner.

    Output that can no longer be written (the pipe to `tee` closed, the terminal went away) is
    not an error to raise in some log pump: it sets `closed`, which stops the loop like Ctrl-C.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.closed = threading.Event()
        try:
            colour = out.isatty() and not os.environ.get("NO_COLOR")
        except (OSError, ValueError):
            colour = False
        self.colours = {"emulator": "\033[36m", "function": "\033[35m", "dev": "\033[1m"} if colour else {}
        self.reset = "\033[0m" if colour else ""

    def line(self, source: str, text: str) -> None:
        tag = f"{self.colours.get(source, '')}{source:>8} |{self.reset}"
        self.block(f"{tag} {text}\n")

    def block(self, text: str) -> None:
        if self.closed.is_set():
            return
        with self.lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):  # EPIPE, EIO, or a stream already closed
                self.closed.set()


def readable(line: str) -> str | None:
    """The function's JSON log line as one short human line; anything else unchanged."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "severity" not in entry or "message" not in entry:
        return line
    severity, message = str(entry.pop("severity")), str(entry.pop("message"))
    latency = entry.pop("latency_ms", None)
    status = entry.pop("status", "")
    for key in ("event_type", "outcome"):
        if str(entry.get(key)) in message:
            del entry[key]
    rest = " ".join(f"{key}={value}" for key, value in entry.items() if value is not None)
    timing = f" ({latency} ms)" if latency is not None else ""
    return f"{severity:<7} {status} {message}  {rest}{timing}".rstrip()


def emulator_line(line: str) -> str | None:
    """The emulator's line, minus its two-line notice for every client connection."""
    return None if EMULATOR_CHATTER.search(line) else line


def _pump(console: Console, name: str, stream: IO[bytes], transform: Callable[[str], str | None]) -> None:
    for raw in iter(stream.readline, b""):
        shown = transform(raw.decode(errors="replace").rstrip("\r\n"))
        if shown is not None:
            console.line(name, shown)
    stream.close()


def _start(console: Console, name: str, command: list[str], environment: dict[str, str]) -> Child:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    transform = readable if name == "function" else emulator_line
    pump = threading.Thread(target=_pump, args=(console, name, process.stdout, transform), daemon=True)
    pump.start()
    return Child(name=name, process=process, pump=pump)


def _stop(child: Child) -> None:
    """SIGTERM to the child's process group, SIGKILL if it lingers; never waits unbounded."""
    process = child.process
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
        # Members that outlived the leader (a Java child, a worker) go too.
        os.killpg(process.pid, signal.SIGKILL)
    if child.pump is not None:
        child.pump.join(timeout=2.0)


def _function_answers(url: str) -> bool:
    """functions-framework answers /robots.txt itself, so probing does not call the function."""
    try:
        with urllib.request.urlopen(url + "robots.txt", timeout=1.0):  # noqa: S310 (loopback http)
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def _wait_until(
    ready: Callable[[], bool], child: Child, timeout: float, stop: threading.Event, console: Console
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if ready():
            return True
        if child.process.poll() is not None:
            code = child.process.returncode
            console.line("dev", f"the {child.name} exited (code {code}) before answering; see its log above")
            return False
        stop.wait(0.25)
    if not stop.is_set():
        console.line("dev", f"the {child.name} did not answer within {timeout:.0f} s; see its log above")
    return False


def ngrok_public_url(api: str, port: int) -> str | None:
    """The https URL of a running ngrok tunnel to `port`, from the local agent API, if any."""
    try:
        with urllib.request.urlopen(api.rstrip("/") + "/api/tunnels", timeout=1.0) as response:  # noqa: S310
            tunnels = json.load(response).get("tunnels", [])
    except (OSError, ValueError, AttributeError, urllib.error.URLError):
        return None
    for tunnel in tunnels if isinstance(tunnels, list) else []:
        address = str((tunnel.get("config") or {}).get("addr", ""))
        public = str(tunnel.get("public_url", ""))
        if public.startswith("https://") and re.search(rf"(^|:){port}$", address):
            return public
    return None


def _watch_ngrok(api: str, port: int, stop: threading.Event, console: Console) -> None:
    while not stop.wait(NGROK_POLL_SECONDS):
        public = ngrok_public_url(api, port)
        if public:
            console.block(
                f"\nngrok tunnel found: {public} -> http://127.0.0.1:{port}\n"
                f"Paste this into Clerk (Webhooks -> Add Endpoint -> Endpoint URL):  {public}/\n\n"
            )
            return


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it: `.env`, `.venv/bin/python`."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tool(command: str) -> str:
    """The command as a person types it: `python3 -m clerk_sync` finds the project's .venv itself."""
    return f"python3 -m clerk_sync {command}"


def banner(function_url: str, function_port: int, emulator_host: str, children: list[Child], secret_from: str) -> str:
    """What to do next, printed once both processes answer."""
    pids = {child.name: child.process.pid for child in children}
    url_flag = "" if function_port == DEFAULT_FUNCTION_PORT else f" --url {function_url}"
    emulator_flag = "" if emulator_host.endswith(f":{DEFAULT_EMULATOR_PORT}") else f" --emulator {emulator_host}"
    rule = "-" * 78
    return f"""
{rule}
clerk-sync dev: both are running (Ctrl-C stops both)
  function  {function_url}  (pid {pids["function"]}; every path reaches clerk_webhook)
  emulator  {emulator_host}  (pid {pids["emulator"]}; project {config.EMULATOR_PROJECT}, rules firestore.rules)
  secret    CLERK_WEBHOOK_SIGNING_SECRET from {secret_from}

Offline, in another terminal:
  {_tool("send user.created" + url_flag)}
  {_tool("users" + emulator_flag)}
  {_tool("user USER_ID" + emulator_flag)}
  {_tool("send organization.created" + url_flag)}
  {_tool("organizations" + emulator_flag)}

Real Clerk events (needs network):
  1. ngrok http {function_port}
  2. Clerk dashboard -> Webhooks -> Add Endpoint -> Endpoint URL: the https URL ngrok prints + "/"
     (e.g. https://1a2b-203-0-113-7.ngrok-free.app/); subscribe to user.*, organization.* and
     organizationMembership.* events. This loop prints the exact URL as soon as ngrok runs.
  3. Copy the endpoint's Signing Secret into .env as CLERK_WEBHOOK_SIGNING_SECRET, restart make dev
     (until then Clerk's deliveries are answered 401 bad_signature).
{rule}
"""


def preflight(env_file: Path, function_port: int, emulator_port: int, out: TextIO) -> list[str]:
    """Everything that would stop the loop, found before anything starts; empty when all is well."""
    ensure_env_file(env_file, out)
    config.load_env_file(env_file)
    problems = []
    try:
        config.read_webhook_key()
    except config.Misconfigured as problem:
        problems.append(f"{problem} (see {shown(env_file)}; a variable set in the environment wins over it)")
    problems += missing_prerequisites()
    if function_port == emulator_port:
        problems.append(f"the function and the emulator cannot share port {function_port}")
    else:
        problems += taken_ports(
            {
                "the function": (function_port, "--port", "PORT"),
                "the Firestore emulator": (emulator_port, "--emulator-port", "EMULATOR_PORT"),
            }
        )
    return problems


def run(*, env_file: Path, function_port: int, emulator_port: int, ngrok_api: str, start_timeout: float) -> int:
    """Run the loop until Ctrl-C, SIGTERM, SIGHUP, closed output or either process dying.

    0 after a requested stop. Whatever ends it, both process groups are stopped before it returns.
    """
    console = Console(sys.stdout)
    problems = preflight(env_file, function_port, emulator_port, sys.stdout)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    requested: list[str] = []

    def on_signal(number: int, _frame: FrameType | None) -> None:
        requested.append(signal.Signals(number).name)
        stop.set()

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, on_signal) for number in watched}
    children: list[Child] = []
    threading.Thread(target=_stop_when_closed, args=(console, stop, requested), daemon=True).start()
    try:
        healthy = _serve(env_file, function_port, emulator_port, ngrok_api, start_timeout, stop, console, children)
        return 0 if healthy or requested else 1
    finally:
        stop.set()
        if requested:
            console.line("dev", f"{requested[0]}: stopping the function and the emulator")
        for child in reversed(children):
            _stop(child)
        for number, handler in previous.items():
            signal.signal(number, handler)
        if children:
            console.line("dev", "stopped")
        if console.closed.is_set():
            _silence_stdout()


def _stop_when_closed(console: Console, stop: threading.Event, requested: list[str]) -> None:
    """Output that cannot be written any more stops the loop, as a signal would."""
    while not stop.is_set():
        if console.closed.wait(POLL_SECONDS):
            requested.append("output closed")
            stop.set()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail on the closed pipe."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _serve(
    env_file: Path,
    function_port: int,
    emulator_port: int,
    ngrok_api: str,
    start_timeout: float,
    stop: threading.Event,
    console: Console,
    children: list[Child],
) -> bool:
    """Start both, announce them, then watch; False when one failed to start or died."""
    secret_variable, secret = config.read_signing_secret()
    emulator_host = f"127.0.0.1:{emulator_port}"
    function_url = f"http://127.0.0.1:{function_port}/"
    rules = ROOT / "firestore.rules"
    emulator = _start(
        console,
        "emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port={emulator_host}", f"--rules={rules}"],
        dict(os.environ),
    )
    children.append(emulator)
    if not _wait_until(lambda: emulator_answers(emulator_host), emulator, start_timeout, stop, console):
        return False
    function = _start(
        console,
        "function",
        [
            _functions_framework(),
            "--target=clerk_webhook",
            f"--source={ROOT / 'main.py'}",
            "--host=127.0.0.1",
            f"--port={function_port}",
        ],
        _function_environment(emulator_host, secret),
    )
    children.append(function)
    if not _wait_until(lambda: _function_answers(function_url), function, start_timeout, stop, console):
        return False
    secret_from = shown(env_file) if dotenv_values(env_file).get(secret_variable) == secret else "the environment"
    console.block(banner(function_url, function_port, emulator_host, children, secret_from))
    threading.Thread(target=_watch_ngrok, args=(ngrok_api, function_port, stop, console), daemon=True).start()
    while not stop.wait(POLL_SECONDS):
        dead = next((child for child in children if child.process.poll() is not None), None)
        if dead is not None:
            console.line("dev", f"the {dead.name} exited (code {dead.process.returncode}); stopping the other")
            return False
    return True


def _functions_framework() -> str:
    beside = Path(sys.executable).with_name("functions-framework")
    return str(beside) if beside.exists() else (shutil.which("functions-framework") or "functions-framework")


def _function_environment(emulator_host: str, secret: str) -> dict[str, str]:
    environment = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": emulator_host,
        "GOOGLE_CLOUD_PROJECT": config.EMULATOR_PROJECT,
        "CLERK_WEBHOOK_SIGNING_SECRET": secret,
        "PYTHONUNBUFFERED": "1",
    }
    environment.pop("K_SERVICE", None)
    environment.pop("GCP_PROJECT", None)
    return environment

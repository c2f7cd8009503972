"""`make dev`: the whole loop on localhost, in the foreground, stopped together.

The webhook function and the Firestore emulator it writes to; the token function and the Firebase
Auth emulator the app signs in to, with a development key pair standing in for the Clerk instance's
(`python3 -m clerk_sync session-token` mints with it). Each child runs in its own process group, so
stopping one stops everything it started (gcloud's Java emulator, gunicorn's workers, firebase-tools),
and a Ctrl-C reaches only us: we decide the order.
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
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from dotenv import dotenv_values

from clerk_sync import config
from tools import mint
from tools.common import (
    DEFAULT_AUTH_PORT,
    DEFAULT_EMULATOR_PORT,
    DEFAULT_FUNCTION_PORT,
    DEFAULT_TOKEN_PORT,
    ROOT,
    emulator_answers,
    write_private,
)
from tools.foreground import (
    Child,
    Console,
    emulator_line,
    free_port,
    port_taken,
    readable,
    start,
    stop_all,
    wait_until,
)

__all__ = ["Ports", "ensure_env_file", "missing_prerequisites", "new_signing_secret", "run", "taken_ports"]

PROBE_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 0.2
NGROK_POLL_SECONDS = 2.0
PLACEHOLDER_SECRET = "whsec_REPLACE_ME"  # noqa: S105 (the placeholder in .env.example)
SECRET_LINE = re.compile(r"^(CLERK_WEBHOOK_SIGNING_SECRET=).*$", re.MULTILINE)
INSTALL_GCLOUD = (
    "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install "
    "(Debian/Ubuntu: sudo apt-get install google-cloud-cli; macOS: brew install --cask google-cloud-sdk)"
)
INSTALL_EMULATOR = (
    "install it with `sudo apt-get install google-cloud-cli-firestore-emulator` (apt installs) "
    "or `gcloud components install cloud-firestore-emulator` (installer / Homebrew installs)"
)
FIREBASE_CLI = ROOT / "node_modules" / ".bin" / "firebase"
MIN_NODE_MAJOR = 20
INSTALL_NODE = (
    "the Auth emulator (firebase-tools) runs on Node.js 20 or newer: sudo apt-get install nodejs npm "
    "(or https://nodejs.org), or run only the webhook with `python3 -m clerk_sync dev --webhook-only`"
)
# A port taken by something else: suggest this far up, clear of every default of the loop.
ALTERNATIVE_PORT_OFFSET = 100
INSTALL_JAVA = (
    "the emulator is a Java program: sudo apt-get install openjdk-21-jre-headless "
    "(or openjdk-17-jre-headless where 21 is not packaged; gcloud after 528 wants 21; "
    "macOS: brew install openjdk@21), then check `java -version`"
)


def new_signing_secret() -> str:
    """A fresh `whsec_` secret: base64 of 24 random bytes, the shape Svix issues."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def ensure_env_file(env_file: Path, out: TextIO) -> None:
    """Create `.env` from `.env.example` with a fresh secret, fill in a placeholder, keep it private."""
    if not env_file.exists():
        example = ROOT / ".env.example"
        template = example.read_text() if example.is_file() else "CLERK_WEBHOOK_SIGNING_SECRET=\n"
        text, replaced = SECRET_LINE.subn(rf"\g<1>{new_signing_secret()}", template, count=1)
        if not replaced:
            text += f"CLERK_WEBHOOK_SIGNING_SECRET={new_signing_secret()}\n"
        write_private(env_file, text)
        out.write(f"created {shown(env_file)} with a fresh local signing secret (never commit it)\n")
        return
    text = env_file.read_text()
    values = dotenv_values(env_file)
    placeholder = values.get("CLERK_WEBHOOK_SIGNING_SECRET") == PLACEHOLDER_SECRET
    # An emptied line is a request for a secret too, unless the older name still holds one.
    emptied = "CLERK_WEBHOOK_SIGNING_SECRET" in values and not (values["CLERK_WEBHOOK_SIGNING_SECRET"] or "").strip()
    if placeholder or (emptied and not (values.get("WEBHOOK_SECRET") or "").strip()):
        fresh = new_signing_secret()
        write_private(env_file, SECRET_LINE.sub(rf"\g<1>{fresh}", text, count=1))
        if os.environ.get("CLERK_WEBHOOK_SIGNING_SECRET", "").strip() in {PLACEHOLDER_SECRET, ""}:
            os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = fresh  # loaded from the file before we replaced it
        what = "placeholder" if placeholder else "empty"
        out.write(f"replaced the {what} secret in {shown(env_file)} with a fresh local one\n")
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


def _node_major(node: str) -> int | None:
    try:
        answer = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", answer.stdout.strip())
    return int(match.group(1)) if match else None


def missing_prerequisites(*, token: bool = True) -> list[str]:
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
    if token:
        node = shutil.which("node")
        major = _node_major(node) if node else None
        if node is None:
            problems.append(f"node is not on PATH: {INSTALL_NODE}")
        elif major is None or major < MIN_NODE_MAJOR:
            problems.append(f"`node --version` is not 20 or newer: {INSTALL_NODE}")
        elif not FIREBASE_CLI.exists():
            problems.append(
                f"{shown(FIREBASE_CLI)} is missing: run `make node-modules` (npm ci; `make dev` runs it itself)"
            )
    return problems


def taken_ports(ports: dict[str, tuple[int, str, str]]) -> list[str]:
    """A message per port in use (name -> (port, flag, variable)), with how to pick another."""
    return [
        f"port {port} ({name}) is already in use on 127.0.0.1. Stop what listens there "
        f"(`lsof -iTCP:{port} -sTCP:LISTEN` or `ss -ltnp 'sport = :{port}'` shows it), or choose another: "
        f"`make dev {variable}={port + ALTERNATIVE_PORT_OFFSET}` or "
        f"`python3 -m clerk_sync dev {flag} {port + ALTERNATIVE_PORT_OFFSET}`"
        for name, (port, flag, variable) in ports.items()
        if port_taken(port)
    ]


@dataclass(frozen=True)
class Ports:
    """Where each part listens; `token` and `auth` are None with --webhook-only."""

    webhook: int = DEFAULT_FUNCTION_PORT
    firestore: int = DEFAULT_EMULATOR_PORT
    token: int | None = DEFAULT_TOKEN_PORT
    auth: int | None = DEFAULT_AUTH_PORT

    def named(self) -> dict[str, tuple[int, str, str]]:
        """name -> (port, flag, make variable), for the parts that run."""
        parts = {
            "the webhook function": (self.webhook, "--port", "PORT"),
            "the Firestore emulator": (self.firestore, "--emulator-port", "EMULATOR_PORT"),
        }
        if self.token is not None:
            parts["the token function"] = (self.token, "--token-port", "TOKEN_PORT")
        if self.auth is not None:
            parts["the Auth emulator"] = (self.auth, "--auth-port", "AUTH_PORT")
        return parts


def _unchanged(line: str) -> str | None:
    return line


TRANSFORMS: dict[str, Callable[[str], str | None]] = {
    "firestore": emulator_line,
    "webhook": readable,
    "token": readable,
    "auth": _unchanged,
}


def _launch(
    console: Console, name: str, title: str, command: list[str], environment: dict[str, str], cwd: Path = ROOT
) -> Child:
    return start(console, name, title, command, environment, cwd, TRANSFORMS[name])


def _function_answers(url: str) -> bool:
    """functions-framework answers /robots.txt itself, so probing does not call the function."""
    try:
        with urllib.request.urlopen(url + "robots.txt", timeout=1.0):  # noqa: S310 (loopback http)
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def auth_emulator_answers(host: str) -> bool:
    """Whether the Auth emulator at `host` says it is ready (firebase-tools' status page)."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1.0) as response:
            return bool(json.loads(response.read()).get("authEmulator", {}).get("ready"))
    except (OSError, ValueError, AttributeError, urllib.error.URLError):
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


@dataclass(frozen=True)
class Announced:
    """What the banner says besides the processes: where the secret and the session key come from."""

    secret_from: str
    verifier: str = ""
    parties: str = ""


def _client_lines(ports: Ports, env_flag: str) -> str:
    """How to run the docs' client code against this loop (the ports as environment when not default)."""
    assert ports.token is not None
    assert ports.auth is not None
    custom = [
        f"{name}={value}"
        for name, value, default in (
            ("TOKEN_URL", f"http://127.0.0.1:{ports.token}/", f"http://127.0.0.1:{DEFAULT_TOKEN_PORT}/"),
            ("FIREBASE_AUTH_EMULATOR_HOST", f"127.0.0.1:{ports.auth}", f"127.0.0.1:{DEFAULT_AUTH_PORT}"),
            ("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{ports.firestore}", f"127.0.0.1:{DEFAULT_EMULATOR_PORT}"),
        )
        if value != default
    ]
    prefix = " ".join(custom) + " " if custom else ""
    return (
        f"  {_tool('session-token USER_ID' + env_flag)}   # a Clerk-shaped session token (60 s)\n"
        "  make docs-ts                                # the docs' TypeScript, compiled (tsc, strict)\n"
        f'  {prefix}node_modules/.bin/tsx build/docs-ts/try-local.ts "$({_tool("session-token USER_ID" + env_flag)})"\n'
    )


def banner(ports: Ports, children: list[Child], announced: Announced, env_file: Path) -> str:
    """What to do next, printed once every process answers."""
    pids = {child.name: child.process.pid for child in children}
    env_flag = "" if env_file.resolve() == (ROOT / ".env").resolve() else f" --env-file {shown(env_file)}"
    webhook_url = f"http://127.0.0.1:{ports.webhook}/"
    url_flag = "" if ports.webhook == DEFAULT_FUNCTION_PORT else f" --url {webhook_url}"
    emulator_flag = "" if ports.firestore == DEFAULT_EMULATOR_PORT else f" --emulator 127.0.0.1:{ports.firestore}"
    rule = "-" * 78
    processes = (
        f"  webhook   {webhook_url}  (pid {pids['webhook']}; every path reaches clerk_webhook)\n"
        f"  firestore 127.0.0.1:{ports.firestore}  (pid {pids['firestore']}; the Firestore emulator, "
        f"project {config.EMULATOR_PROJECT}, rules firestore.rules)\n"
    )
    client = ""
    if ports.token is not None and ports.auth is not None:
        processes += (
            f"  token     http://127.0.0.1:{ports.token}/  (pid {pids['token']}; firebase_token: "
            "Clerk session token in, Firebase custom token out)\n"
            f"  auth      127.0.0.1:{ports.auth}  (pid {pids['auth']}; the Firebase Auth emulator, "
            f"project {config.EMULATOR_PROJECT})\n"
        )
        heading = "The app's side, without Clerk (docs/reading-from-your-app.md#try-it-locally):"
        client = f"\n{heading}\n{_client_lines(ports, env_flag)}"
    keys = ""
    if announced.verifier:
        keys = f"  sessions  verified with {announced.verifier}\n  origins   {announced.parties}\n"
    everything = "all four are" if client else "both are"
    return f"""
{rule}
clerk-sync dev: {everything} running (Ctrl-C stops them)
{processes}  secret    CLERK_WEBHOOK_SIGNING_SECRET from {announced.secret_from}
{keys}
Offline, in another terminal:
  {_tool("send user.created" + url_flag + env_flag)}
  {_tool("users" + emulator_flag)}
  {_tool("user USER_ID" + emulator_flag)}
  {_tool("send organization.created" + url_flag + env_flag)}
  {_tool("organizations" + emulator_flag)}
{client}
Real Clerk events (needs network; ngrok: docs/local-development.md#real-clerk-events-through-ngrok):
  1. ngrok http {ports.webhook}
  2. Clerk dashboard -> Webhooks -> Add Endpoint -> Endpoint URL: the https URL ngrok prints + "/"
     (e.g. https://1a2b-203-0-113-7.ngrok-free.app/); subscribe to user.*, organization.*,
     organizationMembership.* events (with Clerk Billing also subscription.*, subscriptionItem.*,
     paymentAttempt.*). This loop prints the exact URL as soon as ngrok runs.
  3. Copy the endpoint's Signing Secret into .env as CLERK_WEBHOOK_SIGNING_SECRET, restart make dev
     (until then Clerk's deliveries are answered 401 bad_signature).
{rule}
"""


def preflight(env_file: Path, ports: Ports, out: TextIO) -> list[str]:
    """Everything that would stop the loop, found before anything starts; empty when all is well."""
    ensure_env_file(env_file, out)
    config.load_env_file(env_file)
    problems = []
    try:
        config.read_webhook_key()
    except config.Misconfigured as problem:
        problems.append(f"{problem} ({_secret_hint(env_file)})")
    token = ports.token is not None
    problems += missing_prerequisites(token=token)
    named = ports.named()
    numbers = [port for port, _flag, _variable in named.values()]
    if len(set(numbers)) != len(numbers):
        listed = ", ".join(f"{name} {port}" for name, (port, _f, _v) in named.items())
        problems.append(f"each part needs a port of its own: {listed}")
    else:
        problems += taken_ports(named)
    if token:
        mint.ensure_key(mint.key_path(env_file), out)
    return problems


def _secret_hint(env_file: Path) -> str:
    """Where the unusable secret came from, and how to get a fresh local one instead."""
    in_file = dotenv_values(env_file)
    for name in config.SECRET_VARIABLES:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if (in_file.get(name) or "").strip() == value:
            return (
                f"from {shown(env_file)}: for a fresh local secret, empty that line (or delete {shown(env_file)}) "
                "and run make dev again"
            )
        return f"from the environment, which wins over {shown(env_file)}: unset {name} for the one in {shown(env_file)}"
    return f"see {shown(env_file)}"


def run(*, env_file: Path, ports: Ports, ngrok_api: str, start_timeout: float) -> int:
    """Run the loop until Ctrl-C, SIGTERM, SIGHUP, closed output or any process dying.

    0 after a requested stop. Whatever ends it, every process group is stopped before it returns.
    """
    console = Console(sys.stdout)
    problems = preflight(env_file, ports, sys.stdout)
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
    # firebase-tools writes its config and debug log where it runs: a directory of its own.
    scratch = tempfile.TemporaryDirectory(prefix="clerk-sync-dev-")
    try:
        healthy = _serve(env_file, ports, Path(scratch.name), ngrok_api, start_timeout, stop, console, children)
        return 0 if healthy or requested else 1
    finally:
        stop.set()
        if requested and children:
            console.line("dev", f"{requested[0]}: stopping {_names(list(reversed(children)))}")
        stop_all(list(reversed(children)))
        scratch.cleanup()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if children:
            console.line("dev", "stopped")
        if console.closed.is_set():
            _silence_stdout()


def _names(children: list[Child]) -> str:
    titles = [child.title for child in children]
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


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
    ports: Ports,
    scratch: Path,
    ngrok_api: str,
    start_timeout: float,
    stop: threading.Event,
    console: Console,
    children: list[Child],
) -> bool:
    """Start the emulators, then the functions, announce them, then watch; False when one failed or died."""
    secret_variable, secret = config.read_signing_secret()
    firestore_host = f"127.0.0.1:{ports.firestore}"
    rules = ROOT / "firestore.rules"
    firestore = _launch(
        console,
        "firestore",
        "the Firestore emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port={firestore_host}", f"--rules={rules}"],
        dict(os.environ),
    )
    children.append(firestore)
    auth_host = f"127.0.0.1:{ports.auth}"
    auth = None
    if ports.auth is not None:
        auth = _launch(console, "auth", "the Auth emulator", _auth_command(scratch, ports.auth),
                      _auth_environment(scratch), cwd=scratch)  # fmt: skip
        children.append(auth)
    # Both emulators start at once (Java and Node, each several seconds); the functions need them.
    if not wait_until(lambda: emulator_answers(firestore_host), firestore, start_timeout, stop, console):
        return False
    if auth is not None and not wait_until(
        lambda: auth_emulator_answers(auth_host), auth, start_timeout, stop, console
    ):
        return False
    webhook_url = f"http://127.0.0.1:{ports.webhook}/"
    webhook = _launch(console, "webhook", "the webhook function",
                     _functions_framework_command("clerk_webhook", ports.webhook),
                     _webhook_environment(firestore_host, secret))  # fmt: skip
    children.append(webhook)
    announced = Announced(
        secret_from=shown(env_file) if dotenv_values(env_file).get(secret_variable) == secret else "the environment"
    )
    token = None
    if ports.token is not None:
        environment, announced = _token_environment(auth_host, mint.key_path(env_file), announced)
        token = _launch(console, "token", "the token function",
                       _functions_framework_command("firebase_token", ports.token), environment)  # fmt: skip
        children.append(token)
    if not wait_until(lambda: _function_answers(webhook_url), webhook, start_timeout, stop, console):
        return False
    token_url = f"http://127.0.0.1:{ports.token}/"
    if token is not None and not wait_until(lambda: _function_answers(token_url), token, start_timeout, stop, console):
        return False
    console.block(banner(ports, children, announced, env_file))
    threading.Thread(target=_watch_ngrok, args=(ngrok_api, ports.webhook, stop, console), daemon=True).start()
    while not stop.wait(POLL_SECONDS):
        dead = next((child for child in children if child.process.poll() is not None), None)
        if dead is not None:
            console.line("dev", f"{dead.title} exited (code {dead.process.returncode}); stopping the others")
            return False
    return True


def _auth_command(scratch: Path, port: int) -> list[str]:
    """firebase-tools with only the Auth emulator; its hub and logging ports free ones, nobody types them."""
    settings = scratch / "firebase.json"
    settings.write_text(
        json.dumps(
            {
                "emulators": {
                    "auth": {"host": "127.0.0.1", "port": port},
                    "hub": {"host": "127.0.0.1", "port": free_port()},
                    "logging": {"host": "127.0.0.1", "port": free_port()},
                    "ui": {"enabled": False},
                    "singleProjectMode": True,
                }
            }
        )
    )
    return [str(FIREBASE_CLI), "emulators:start", "--only", "auth", "--project", config.EMULATOR_PROJECT,
            "--config", str(settings)]  # fmt: skip


def _auth_environment(scratch: Path) -> dict[str, str]:
    """firebase-tools quiet and non-interactive; TMPDIR keeps its hub locator file in our scratch
    directory, so a loop killed hard leaves nothing that makes the next one warn of a second suite."""
    return {**os.environ, "NO_UPDATE_NOTIFIER": "1", "CI": "true", "TMPDIR": str(scratch)}


def _functions_framework_command(target: str, port: int) -> list[str]:
    beside = Path(sys.executable).with_name("functions-framework")
    executable = str(beside) if beside.exists() else (shutil.which("functions-framework") or "functions-framework")
    return [executable, f"--target={target}", f"--source={ROOT / 'main.py'}", "--host=127.0.0.1", f"--port={port}"]


def _local_environment(**values: str) -> dict[str, str]:
    environment = {**os.environ, "GOOGLE_CLOUD_PROJECT": config.EMULATOR_PROJECT, "PYTHONUNBUFFERED": "1", **values}
    environment.pop("K_SERVICE", None)
    environment.pop("GCP_PROJECT", None)
    return environment


def _webhook_environment(emulator_host: str, secret: str) -> dict[str, str]:
    return _local_environment(FIRESTORE_EMULATOR_HOST=emulator_host, CLERK_WEBHOOK_SIGNING_SECRET=secret)


def _token_environment(auth_host: str, key_file: Path, announced: Announced) -> tuple[dict[str, str], Announced]:
    """The token function as deployed, but minting for the Auth emulator and, unless .env names a Clerk
    instance's key, verifying with the development key; any origin unless .env lists the app's."""
    environment = _local_environment(FIREBASE_AUTH_EMULATOR_HOST=auth_host)
    if environment.get("CLERK_JWT_KEY", "").strip():
        verifier = "CLERK_JWT_KEY from .env or the environment: your Clerk instance's key (session-token's are refused)"
    else:
        environment["CLERK_JWT_KEY"] = mint.public_pem(key_file)
        verifier = f"{shown(key_file)}, the local stand-in for a Clerk instance's key (session-token signs with it)"
    parties = environment.get("CLERK_AUTHORIZED_PARTIES", "").strip()
    if parties:
        origins = f"CLERK_AUTHORIZED_PARTIES={parties}"
    elif environment.get("ALLOW_ANY_AUTHORIZED_PARTY", "").strip():
        origins = "any (ALLOW_ANY_AUTHORIZED_PARTY from .env or the environment)"
    else:
        environment["ALLOW_ANY_AUTHORIZED_PARTY"] = "true-local-only"
        origins = "any azp (set CLERK_AUTHORIZED_PARTIES in .env to check your app's origins)"
    return environment, Announced(announced.secret_from, verifier, origins)

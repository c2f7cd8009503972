"""What the command-line tools share: paths, defaults, one error type, and which Firestore to talk to.

Only the tools import this module; the deployed function never does (cold start).
"""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clerk_sync import config

if TYPE_CHECKING:
    from google.cloud import firestore

__all__ = [
    "DEFAULT_AUTH_PORT",
    "DEFAULT_EMULATOR_HOST",
    "DEFAULT_EMULATOR_PORT",
    "DEFAULT_FUNCTION_PORT",
    "DEFAULT_TOKEN_PORT",
    "ROOT",
    "FirestoreTarget",
    "ToolError",
    "checked_emulator_host",
    "emulator_answers",
    "firestore_client",
    "firestore_target",
    "settings",
    "write_private",
]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FUNCTION_PORT = 8080
DEFAULT_EMULATOR_PORT = 8081
DEFAULT_EMULATOR_HOST = f"127.0.0.1:{DEFAULT_EMULATOR_PORT}"
DEFAULT_TOKEN_PORT = 8082
DEFAULT_AUTH_PORT = 9099  # firebase-tools' own default for the Auth emulator


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, from the first byte (it holds a secret or a key)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class ToolError(Exception):
    """A problem the operator can fix; the message says how and is printed without a traceback."""


def settings() -> config.Settings:
    """The same validated settings the function reads, or a ToolError naming the variable."""
    try:
        return config.read_settings()
    except config.Misconfigured as problem:
        raise ToolError(str(problem)) from None


@dataclass(frozen=True)
class FirestoreTarget:
    """A Firestore database: the emulator at `emulator_host`, or the real one when it is None."""

    project: str
    database: str
    emulator_host: str | None

    def describe(self) -> str:
        """One line for the operator, so nobody writes to production thinking it is the emulator."""
        where = f"emulator {self.emulator_host}" if self.emulator_host else "Google Cloud (not the emulator)"
        database = "" if self.database == "(default)" else f", database {self.database}"
        return f"Firestore: {where}, project {self.project}{database}"


def checked_emulator_host(value: str, given_as: str) -> str:
    """`HOST:PORT` as given, or a ToolError naming `given_as` (`--emulator`, `FIRESTORE_EMULATOR_HOST=`)."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ToolError(
            f"{given_as}{value[:100]} needs a port: HOST:PORT, such as {DEFAULT_EMULATOR_HOST} "
            "(what `make dev` prints as the emulator's address)"
        )
    return value


def firestore_target(project: str | None, emulator: str | None, database: str | None) -> FirestoreTarget:
    """`--emulator` wins; `--project` alone means the real project; neither means the local emulator."""
    database = database or os.environ.get("FIRESTORE_DATABASE", "").strip() or "(default)"
    environment_project = os.environ.get("GOOGLE_CLOUD_PROJECT", "").strip() or None
    if emulator is not None:
        host = checked_emulator_host(emulator.strip(), "--emulator ")
        return FirestoreTarget(project or environment_project or config.EMULATOR_PROJECT, database, host)
    if project:
        return FirestoreTarget(project, database, None)
    from_environment = os.environ.get("FIRESTORE_EMULATOR_HOST", "").strip()
    host = (
        checked_emulator_host(from_environment, "FIRESTORE_EMULATOR_HOST=")
        if from_environment
        else DEFAULT_EMULATOR_HOST
    )
    return FirestoreTarget(environment_project or config.EMULATOR_PROJECT, database, host)


def emulator_answers(host: str, timeout: float = 1.0) -> bool:
    """Whether a Firestore emulator answers its health check at `host` (`127.0.0.1:PORT`)."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def firestore_client(target: FirestoreTarget) -> firestore.Client:
    """A client for `target`; raises ToolError when the emulator is down or credentials are missing."""
    # Imported here: `send` and `dev` never need the Firestore client library.
    from google.auth import exceptions as auth_exceptions  # noqa: PLC0415
    from google.cloud import firestore  # noqa: PLC0415

    if target.emulator_host:
        if not emulator_answers(target.emulator_host, timeout=3.0):
            raise ToolError(
                f"no Firestore emulator answers at {target.emulator_host}: start one with `make dev`, "
                "or point at another with --emulator HOST:PORT, or at a real project with --project ID"
            )
        os.environ["FIRESTORE_EMULATOR_HOST"] = target.emulator_host
    else:
        # The client would silently prefer an emulator named in the environment or .env.
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
    try:
        return firestore.Client(project=target.project, database=target.database)
    except auth_exceptions.DefaultCredentialsError:
        raise ToolError(
            f"no Google credentials for project {target.project}: run `gcloud auth application-default login`"
        ) from None

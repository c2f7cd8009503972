"""Settings read once from the environment and validated, so a bad value is refused, never half-used.

Every problem is a `Misconfigured` naming the variable: the function answers `500 misconfigured`
with one log line saying what to fix, on every request, until the deployment is corrected.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from clerk_sync import paths, signature

__all__ = [
    "EMULATOR_PROJECT",
    "SECRET_VARIABLES",
    "Misconfigured",
    "ReconcileSettings",
    "Settings",
    "auth_emulator_problem",
    "load_env_file",
    "read_reconcile_settings",
    "read_settings",
    "read_signing_secret",
    "read_webhook_key",
    "reset",
    "settings",
    "webhook_key",
]

SECRET_VARIABLES = ("CLERK_WEBHOOK_SIGNING_SECRET", "WEBHOOK_SECRET")
EMULATOR_PROJECT = "demo-clerk-sync"
# Svix waits 15 s for an answer; the Firestore budget must end before that.
SVIX_TIMEOUT_SECONDS = 15.0
# Svix retries for about 28 h: an event record must outlive that or a late retry is applied twice.
MIN_EVENT_TTL_DAYS = 2
DATABASE_ID = re.compile(r"\(default\)|[a-z][a-z0-9-]{2,61}[a-z0-9]")
ON_USER_DELETED = ("delete", "keep-app-fields")
AUTH_VARIABLE = "SYNC_FIREBASE_AUTH"
AUTH_EMULATOR_VARIABLE = "FIREBASE_AUTH_EMULATOR_HOST"
HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")


class Misconfigured(Exception):
    """A setting is missing or unusable; the message names the variable and never holds its value."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    """What every writer needs to know about its deployment."""

    project_id: str | None
    database: str
    firestore_deadline_seconds: float
    event_ttl_days: int
    on_user_deleted: str
    paths: paths.Paths
    # SYNC_FIREBASE_AUTH: bans, deprovisioning and deletions reach the users' Firebase Auth records.
    firebase_auth: bool = True

    @property
    def event_ttl(self) -> timedelta:
        """How long an event's idempotency record is kept before the TTL policy may drop it."""
        return timedelta(days=self.event_ttl_days)


def load_env_file(path: Path) -> set[str]:
    """Local runs only: `.env` fills what the environment leaves unset (or empty); set variables win.

    Returns the names it filled (the tools refuse some of them against a real project).
    """
    from dotenv import dotenv_values  # noqa: PLC0415 (never on Cloud Functions)

    filled: set[str] = set()
    if not path.is_file():
        return filled
    for name, value in dotenv_values(path).items():
        if value is not None and not os.environ.get(name, "").strip():
            os.environ[name] = value
            filled.add(name)
    return filled


def _text(name: str) -> str:
    return os.environ.get(name, "").strip()


def _deadline(name: str, default: float) -> float:
    raw = _text(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise Misconfigured(name, "is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value < SVIX_TIMEOUT_SECONDS:
        raise Misconfigured(name, f"must be more than 0 and less than {SVIX_TIMEOUT_SECONDS:.0f} (Svix's timeout)")
    return value


def _ttl_days(name: str, default: int) -> int:
    raw = _text(name)
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise Misconfigured(name, "is not a whole number of days") from None
    if value < MIN_EVENT_TTL_DAYS:
        raise Misconfigured(name, f"must be at least {MIN_EVENT_TTL_DAYS} (Svix retries for about 28 hours)")
    return value


def _collection(name: str, default: str) -> str:
    value = _text(name) or default
    problem = paths.collection_path_problem(value)
    if problem:
        raise Misconfigured(name, problem)
    return value


def auth_emulator_problem(project: str | None = None) -> tuple[str, str] | None:
    """Why FIREBASE_AUTH_EMULATOR_HOST cannot be used as set, as (variable, problem); None when it can.

    With the emulator firebase-admin finds no project id in any credentials, so it needs one
    (`project`, else GOOGLE_CLOUD_PROJECT); on Cloud Functions an emulator would take calls meant
    for the real Firebase Auth, and mint tokens nobody accepts.
    """
    host = _text(AUTH_EMULATOR_VARIABLE)
    if not host:
        return None
    if _text("K_SERVICE"):
        return AUTH_EMULATOR_VARIABLE, "is for local development only and refused on Cloud Functions"
    if not HOST_PORT.fullmatch(host):
        return AUTH_EMULATOR_VARIABLE, "must be HOST:PORT of the Auth emulator, e.g. 127.0.0.1:9099"
    if not project and not _text("GOOGLE_CLOUD_PROJECT"):
        return (
            "GOOGLE_CLOUD_PROJECT",
            f"must be set with {AUTH_EMULATOR_VARIABLE}: the emulator's project, e.g. demo-clerk-sync",
        )
    return None


def _firebase_auth(project: str | None) -> bool:
    """SYNC_FIREBASE_AUTH, on unless `false`; off with a local Firestore and no Auth emulator to call.

    The Firestore emulator's users exist nowhere else: the calls would go to a real Firebase Auth
    (of a `demo-` project, which cannot exist), so `make dev` and the tests without an Auth emulator
    run with them off. On Cloud Functions neither emulator is ever set.
    """
    raw = _text(AUTH_VARIABLE).lower()
    if raw not in {"", "true", "false"}:
        raise Misconfigured(AUTH_VARIABLE, "must be true or false")
    if raw == "false" or (_text("FIRESTORE_EMULATOR_HOST") and not _text(AUTH_EMULATOR_VARIABLE)):
        return False
    problem = auth_emulator_problem(project)
    if problem is not None:
        raise Misconfigured(*problem)
    return True


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = _text(name) or choices[0]
    if value not in choices:
        raise Misconfigured(name, f"must be one of {', '.join(choices)}")
    return value


def read_settings() -> Settings:
    """Read and validate settings now; an empty variable counts as unset so `VAR=` restores a default."""
    project = _text("GOOGLE_CLOUD_PROJECT") or _text("GCP_PROJECT") or None
    if project is None and _text("FIRESTORE_EMULATOR_HOST"):
        project = EMULATOR_PROJECT
    database = _text("FIRESTORE_DATABASE") or "(default)"
    if not DATABASE_ID.fullmatch(database):
        raise Misconfigured("FIRESTORE_DATABASE", "is not a Firestore database id")
    users = _collection("USERS_COLLECTION", "users")
    organizations = _collection("ORGANIZATIONS_COLLECTION", "organizations")
    layout = paths.paths_for(users, organizations)
    taken = {layout.claims, layout.user_tombstones, layout.organization_tombstones}
    taken |= {layout.membership_tombstones, layout.events, layout.state, layout.ended_sessions}
    if users == organizations or organizations in taken or users in taken:
        raise Misconfigured("ORGANIZATIONS_COLLECTION", "must differ from USERS_COLLECTION and the bookkeeping ones")
    return Settings(
        project_id=project,
        database=database,
        firestore_deadline_seconds=_deadline("FIRESTORE_DEADLINE_SECONDS", 8.0),
        event_ttl_days=_ttl_days("EVENT_LOG_TTL_DAYS", 30),
        on_user_deleted=_choice("ON_USER_DELETED", ON_USER_DELETED),
        paths=layout,
        firebase_auth=_firebase_auth(project),
    )


def read_signing_secret() -> tuple[str, str]:
    """The variable holding the webhook signing secret and its value; raises Misconfigured when unset."""
    for name in SECRET_VARIABLES:
        value = _text(name)
        if value:
            return name, value
    raise Misconfigured(SECRET_VARIABLES[0], "is not set: use the endpoint's whsec_ signing secret")


@functools.cache
def settings() -> Settings:
    """Settings for this instance, read on first success (tests call `settings.cache_clear()`)."""
    return read_settings()


def read_webhook_key() -> bytes:
    """The HMAC key of the configured signing secret; raises Misconfigured for anything but a whsec_ value."""
    name, secret = read_signing_secret()
    try:
        return signature.signing_key(secret)
    except ValueError:
        raise Misconfigured(name, "is not a valid whsec_ signing secret (Clerk: Webhooks → endpoint)") from None


@functools.cache
def webhook_key() -> bytes:
    """The signing key, decoded once per instance (tests call `webhook_key.cache_clear()`)."""
    return read_webhook_key()


def reset() -> None:
    """Forget what was read, so the next request reads the environment again (tests, tools)."""
    settings.cache_clear()
    webhook_key.cache_clear()


@dataclass(frozen=True)
class ReconcileSettings:
    """What the scheduled reconcile function needs besides the common settings."""

    secret_key: str
    clerk_api_url: str
    audience: str
    invokers: frozenset[str]
    budget_seconds: float
    certs_url: str


GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
CLERK_API_URL = "https://api.clerk.com/v1"


def read_reconcile_settings() -> ReconcileSettings:
    """The scheduled function's settings; raises Misconfigured naming the first unusable one."""
    secret_key = _text("CLERK_SECRET_KEY")
    if not secret_key.startswith("sk_"):
        raise Misconfigured("CLERK_SECRET_KEY", "must be the instance's Backend API key (sk_live_… or sk_test_…)")
    audience = _text("RECONCILE_AUDIENCE")
    if not audience.startswith("https://") and not audience.startswith("http://127.0.0.1"):
        raise Misconfigured("RECONCILE_AUDIENCE", "must be the function's own URL (the OIDC token's audience)")
    invokers = frozenset(name.strip() for name in _text("RECONCILE_INVOKERS").split(",") if name.strip())
    if not invokers or not all("@" in name for name in invokers):
        raise Misconfigured("RECONCILE_INVOKERS", "must list the service accounts allowed to call it (comma-separated)")
    raw_budget = _text("RECONCILE_BUDGET_SECONDS")
    try:
        budget = float(raw_budget) if raw_budget else 1500.0
    except ValueError:
        raise Misconfigured("RECONCILE_BUDGET_SECONDS", "is not a number of seconds") from None
    if not math.isfinite(budget) or budget <= 0:
        raise Misconfigured("RECONCILE_BUDGET_SECONDS", "must be a positive number, below the function's timeout")
    return ReconcileSettings(
        secret_key=secret_key,
        clerk_api_url=_text("CLERK_API_URL") or CLERK_API_URL,
        audience=audience,
        invokers=invokers,
        budget_seconds=budget,
        certs_url=_text("RECONCILE_CERTS_URL") or GOOGLE_CERTS_URL,
    )

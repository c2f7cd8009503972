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

from clerk_sync import paths, signature

__all__ = [
    "EMULATOR_PROJECT",
    "SECRET_VARIABLES",
    "Misconfigured",
    "Settings",
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

    @property
    def event_ttl(self) -> timedelta:
        """How long an event's idempotency record is kept before the TTL policy may drop it."""
        return timedelta(days=self.event_ttl_days)


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
    taken |= {layout.membership_tombstones, layout.events, layout.state}
    if users == organizations or organizations in taken or users in taken:
        raise Misconfigured("ORGANIZATIONS_COLLECTION", "must differ from USERS_COLLECTION and the bookkeeping ones")
    return Settings(
        project_id=project,
        database=database,
        firestore_deadline_seconds=_deadline("FIRESTORE_DEADLINE_SECONDS", 8.0),
        event_ttl_days=_ttl_days("EVENT_LOG_TTL_DAYS", 30),
        on_user_deleted=_choice("ON_USER_DELETED", ON_USER_DELETED),
        paths=layout,
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

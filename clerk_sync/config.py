"""Settings read once from the environment, so every request sees the same configuration."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Settings", "settings"]

SECRET_VARIABLES = ("CLERK_WEBHOOK_SIGNING_SECRET", "WEBHOOK_SECRET")
EMULATOR_PROJECT = "demo-clerk-sync"


@dataclass(frozen=True)
class Settings:
    """What the function needs to know about its deployment."""

    signing_secret: str | None
    secret_variable: str | None
    project_id: str | None
    database: str
    firestore_deadline_seconds: float
    event_ttl_days: int

    @property
    def event_ttl(self) -> timedelta:
        """How long an event's idempotency record is kept before the TTL policy may drop it."""
        return timedelta(days=self.event_ttl_days)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def read_settings() -> Settings:
    """Read settings now; an empty variable counts as unset so `VAR=` disables a value."""
    secret, secret_variable = None, None
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            secret, secret_variable = value, name
            break
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "").strip() or os.environ.get("GCP_PROJECT", "").strip() or None
    if project is None and os.environ.get("FIRESTORE_EMULATOR_HOST"):
        project = EMULATOR_PROJECT
    return Settings(
        signing_secret=secret,
        secret_variable=secret_variable,
        project_id=project,
        database=os.environ.get("FIRESTORE_DATABASE", "").strip() or "(default)",
        firestore_deadline_seconds=_float("FIRESTORE_DEADLINE_SECONDS", 8.0),
        event_ttl_days=_int("EVENT_LOG_TTL_DAYS", 30),
    )


@functools.cache
def settings() -> Settings:
    """Settings for this instance, read on first use (tests call `settings.cache_clear()`)."""
    return read_settings()

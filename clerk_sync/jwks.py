"""Clerk's JWKS, for instances that verify with CLERK_SECRET_KEY: one fetch for many waiting requests,
kept for an hour, and the last good key set served when a refresh fails.

Clerk rotates instance keys rarely, so a key set that was good an hour ago is almost always good
now: an outage of Clerk's API must not end every sign-in. Only the request that fetches waits
(at most about `TIMEOUT_SECONDS`); the others use the keys at hand, or wait for that one fetch
instead of starting their own. After a failure nobody waits again for `RETRY_AFTER_FAILURE_SECONDS`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KeySet", "KeysUnavailable"]

TIMEOUT_SECONDS = 3.0  # a browser is waiting; Clerk's API answers in well under a second
CACHE_SECONDS = 3600.0  # Clerk rotates instance keys rarely; an unknown kid refetches anyway
RETRY_AFTER_FAILURE_SECONDS = 30.0
UNKNOWN_KID_REFETCH_SECONDS = 60.0  # a new kid shows up within a minute; junk kids cost Clerk nothing
MAX_BYTES = 64 * 1024  # a key set is a few KB


class KeysUnavailable(Exception):
    """Clerk's JWKS could not be fetched (network, Clerk, or a wrong CLERK_SECRET_KEY): try again later."""


def _fetch(url: str, secret_key: str) -> dict[str, Any]:
    """The RSA keys of the set at `url` by `kid`; raises KeysUnavailable (never waits much past the timeout)."""
    import jwt  # noqa: PLC0415 (kept off the webhook's import path)

    headers = {"Authorization": f"Bearer {secret_key}", "User-Agent": "clerk-firestore-sync"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (https, or http on loopback: settings)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (https or loopback)
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(8192):
                size += len(chunk)
                if size > MAX_BYTES or time.monotonic() > deadline:
                    raise KeysUnavailable
                chunks.append(chunk)
        data = json.loads(b"".join(chunks))
        if not isinstance(data, dict):
            raise KeysUnavailable
        key_set = jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, RecursionError, jwt.PyJWTError):  # HTTP errors are OSErrors
        raise KeysUnavailable from None
    keys = {key.key_id: key.key for key in key_set.keys if key.key_type == "RSA" and key.key_id}
    if not keys:
        raise KeysUnavailable
    return keys


@dataclass
class KeySet:
    """The instance's keys from Clerk's JWKS, shared by every request of an instance."""

    url: str
    secret_key: str = field(repr=False)
    keys: dict[str, Any] = field(default_factory=dict)
    fetched_at: float | None = None  # monotonic time of the last good fetch
    attempted_at: float | None = None  # of the last fetch, good or not
    failed: bool = False  # whether the last fetch failed
    fetches: int = 0
    _fetching: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def key(self, kid: str) -> Any | None:
        """The public key named `kid`, or None when the instance has no such key; raises KeysUnavailable."""
        give_up = time.monotonic() + 2 * TIMEOUT_SECONDS + 1
        with self._changed:
            while True:
                now = time.monotonic()
                fresh = self.fetched_at is not None and now - self.fetched_at < CACHE_SECONDS
                recent_failure = (
                    self.failed
                    and self.attempted_at is not None
                    and now - self.attempted_at < RETRY_AFTER_FAILURE_SECONDS
                )
                if kid in self.keys and (fresh or self._fetching or recent_failure):
                    return self.keys[kid]  # stale keys only while a refresh is under way or just failed
                if self._fetching:
                    if now >= give_up or not self._changed.wait(give_up - now):
                        raise KeysUnavailable
                    continue
                if recent_failure:
                    raise KeysUnavailable
                refetched_lately = (
                    self.attempted_at is not None and now - self.attempted_at < UNKNOWN_KID_REFETCH_SECONDS
                )
                if fresh and refetched_lately:
                    return None
                self._fetching = True
                break
        try:
            keys = _fetch(self.url, self.secret_key)
        except KeysUnavailable:
            keys = None
        with self._changed:
            self._fetching = False
            self.fetches += 1
            self.attempted_at = time.monotonic()
            self.failed = keys is None
            if keys is not None:
                self.keys, self.fetched_at = keys, self.attempted_at
            self._changed.notify_all()
            if kid in self.keys:
                return self.keys[kid]  # fresh, or the last good set when this refresh failed
            if keys is None:
                raise KeysUnavailable
            return None

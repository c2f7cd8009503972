"""Every call to Firebase Auth, in one place: minting custom tokens (the exchange) and the state of a
user's Auth record (the webhook: disabled on a ban, deleted with the user).

firebase-admin is imported inside the functions that need it and its app is created on first use,
so a webhook instance that never meets such an event never loads it (cold start and memory stay
where they are; tests/test_token_http.py checks the import path). Every call is bounded: the
library's own waits can reach 120 s (IAM signBlob has no timeout setting), so each call runs on a
small pool of threads and is given up after `CALL_TIMEOUT_SECONDS`; a call given up keeps its thread
until the library lets go, and the pool is small, so stuck calls cost bounded threads.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from firebase_admin import App

__all__ = [
    "CALL_TIMEOUT_SECONDS",
    "AuthFailed",
    "create_custom_token",
    "emulator_problem",
    "reset_app",
]

APP_NAME = "clerk-firestore-sync"
CALL_TIMEOUT_SECONDS = 5.0  # below Svix's 15 s with Firestore's share, and a browser's patience
HTTP_TIMEOUT_SECONDS = 4.0  # firebase-admin's own requests (each retry gets this much)
POOL_THREADS = 4
AUTH_EMULATOR_VARIABLE = "FIREBASE_AUTH_EMULATOR_HOST"
PROJECT_VARIABLE = "GOOGLE_CLOUD_PROJECT"
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")
_STATUS_CODE = re.compile(r'"code":\s*([0-9]{3})')

_app: App | None = None
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()

T = TypeVar("T")


class AuthFailed(Exception):
    """A call to Firebase Auth did not happen. `reason`: `no_credentials` (nothing to sign or call
    with), `denied` (IAM or Auth refused this service account: a missing role) or `unavailable`
    (network, quota, Google's side, or too slow: try again)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def emulator_problem() -> tuple[str, str] | None:
    """Why FIREBASE_AUTH_EMULATOR_HOST cannot be used as set, as (variable, problem); None when it can.

    With the emulator firebase-admin finds no project id in any credentials, so it needs
    GOOGLE_CLOUD_PROJECT; and an emulator on Cloud Functions would mint tokens nobody accepts.
    """
    host = os.environ.get(AUTH_EMULATOR_VARIABLE, "").strip()
    if not host:
        return None
    if os.environ.get("K_SERVICE"):
        return AUTH_EMULATOR_VARIABLE, "is for local development only and refused on Cloud Functions"
    if not _HOST_PORT.fullmatch(host):
        return AUTH_EMULATOR_VARIABLE, "must be HOST:PORT of the Auth emulator, e.g. 127.0.0.1:9099"
    if not os.environ.get(PROJECT_VARIABLE, "").strip():
        return (
            PROJECT_VARIABLE,
            f"must be set with {AUTH_EMULATOR_VARIABLE}: the emulator's project, e.g. demo-clerk-sync",
        )
    return None


def _firebase_app() -> App:
    """The firebase-admin app, created once per instance on first use (cold start stays cheap)."""
    global _app
    import firebase_admin  # noqa: PLC0415 (kept off the webhook's import path)

    with _lock:
        if _app is None:
            # Application Default Credentials: a key file from GOOGLE_APPLICATION_CREDENTIALS signs
            # locally; on Cloud Functions the runtime service account signs through IAM signBlob.
            options: dict[str, object] = {"httpTimeout": HTTP_TIMEOUT_SECONDS}
            project = os.environ.get(PROJECT_VARIABLE, "").strip()
            if project:
                options["projectId"] = project
            _app = firebase_admin.initialize_app(options=options, name=APP_NAME)
        return _app


def reset_app() -> None:
    """Drop the firebase-admin app so the next call reads credentials again (tests switch them)."""
    global _app
    if _app is None:
        return
    import firebase_admin  # noqa: PLC0415

    with _lock:
        if _app is not None:
            firebase_admin.delete_app(_app)
            _app = None


def _bounded(call: Callable[[], T]) -> T:
    """`call()` on the pool, given up after CALL_TIMEOUT_SECONDS (AuthFailed `unavailable`)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="firebase-auth")
        pool = _pool
    future = pool.submit(call)
    try:
        return future.result(timeout=CALL_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        future.cancel()  # still queued behind stuck calls: never runs
        raise AuthFailed("unavailable") from None


def _sign_failure(error: Exception) -> AuthFailed:
    """IAM signBlob's answer: a 4xx other than 429 is this account's rights (`denied`), the rest passes."""
    match = _STATUS_CODE.search(str(error))
    code = int(match.group(1)) if match else None
    if code is not None and 400 <= code < 500 and code != 429:
        return AuthFailed("denied")
    return AuthFailed("unavailable")  # 429, 5xx after google-auth's retries, network


def create_custom_token(uid: str, claims: dict[str, str]) -> str:
    """A Firebase custom token for `uid` with developer `claims`; raises AuthFailed."""
    import google.auth.exceptions  # noqa: PLC0415
    from firebase_admin import auth  # noqa: PLC0415

    def sign() -> bytes:
        token: bytes = auth.create_custom_token(uid, claims or None, app=_firebase_app())
        return token

    try:
        return _bounded(sign).decode()
    except auth.TokenSignError as failed:
        raise _sign_failure(failed) from None
    except google.auth.exceptions.GoogleAuthError as failed:
        # The service account's access token could not be had: the metadata server may be busy.
        raise AuthFailed("unavailable" if failed.retryable else "no_credentials") from None
    except ValueError:
        # No key file and no service account to sign with (firebase-admin wraps this in ValueError).
        raise AuthFailed("no_credentials") from None

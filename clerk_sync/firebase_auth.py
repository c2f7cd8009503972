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
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from firebase_admin import App

__all__ = [
    "ACCESS_STATES",
    "CALL_TIMEOUT_SECONDS",
    "AuthFailed",
    "create_custom_token",
    "disabled_states",
    "reset_app",
    "set_user_access",
]

APP_NAME = "clerk-firestore-sync"
CALL_TIMEOUT_SECONDS = 5.0  # below Svix's 15 s with Firestore's share, and a browser's patience
HTTP_TIMEOUT_SECONDS = 4.0  # firebase-admin's own requests (each retry gets this much)
POOL_THREADS = 4
# What a user's Auth record must be: `deleted` (gone: its refresh token dies), `disabled` (a refresh
# answers USER_DISABLED, a sign-in too), `enabled`.
ACCESS_STATES = ("enabled", "disabled", "deleted")
MAX_USERS_PER_LOOKUP = 100  # Firebase's limit for get_users
PROJECT_VARIABLE = "GOOGLE_CLOUD_PROJECT"
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


def _firebase_app(project: str | None = None) -> App:
    """The firebase-admin app, created once per instance on first use (cold start stays cheap)."""
    global _app
    import firebase_admin  # noqa: PLC0415 (kept off the webhook's import path)

    with _lock:
        if _app is None:
            # Application Default Credentials: a key file from GOOGLE_APPLICATION_CREDENTIALS signs
            # locally; on Cloud Functions the runtime service account signs through IAM signBlob
            # and calls Auth's API with its own access token.
            options: dict[str, object] = {"httpTimeout": HTTP_TIMEOUT_SECONDS}
            project = project or os.environ.get(PROJECT_VARIABLE, "").strip()
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


def _bounded(call: Callable[[], T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
    """`call()` on the pool, given up after `timeout` seconds (AuthFailed `unavailable`)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="firebase-auth")
        pool = _pool
    future = pool.submit(call)
    try:
        return future.result(timeout=max(0.0, timeout))
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


def _call_failure(error: Exception) -> AuthFailed:
    """An Auth API error as AuthFailed: a refused service account is `denied`, the rest may pass."""
    from firebase_admin import exceptions  # noqa: PLC0415

    if isinstance(error, exceptions.PermissionDeniedError | exceptions.UnauthenticatedError):
        return AuthFailed("denied")
    return AuthFailed("unavailable")


def set_user_access(uid: str, access: str, project: str | None, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
    """Make `uid`'s Auth record `enabled`, `disabled` or `deleted`; a uid without one (it never
    signed in to Firebase) is done already. Raises AuthFailed."""
    import google.auth.exceptions  # noqa: PLC0415
    from firebase_admin import auth, exceptions  # noqa: PLC0415

    assert access in ACCESS_STATES

    def call() -> None:
        app = _firebase_app(project)
        try:
            if access == "deleted":
                auth.delete_user(uid, app=app)
            else:
                auth.update_user(uid, disabled=access == "disabled", app=app)
        except auth.UserNotFoundError:
            pass  # no Firebase session was ever made for this user: nothing to end

    try:
        _bounded(call, timeout)
    except exceptions.FirebaseError as failed:
        raise _call_failure(failed) from None
    except google.auth.exceptions.GoogleAuthError as failed:
        raise AuthFailed("unavailable" if failed.retryable else "no_credentials") from None
    except ValueError:  # no project id or no credentials to call with
        raise AuthFailed("no_credentials") from None


def disabled_states(uids: list[str], project: str | None, timeout: float = CALL_TIMEOUT_SECONDS) -> dict[str, bool]:
    """Whether each uid's Auth record is disabled, for the uids that have one (100 per call); raises AuthFailed."""
    import google.auth.exceptions  # noqa: PLC0415
    from firebase_admin import auth, exceptions  # noqa: PLC0415

    found: dict[str, bool] = {}
    for start in range(0, len(uids), MAX_USERS_PER_LOOKUP):
        batch = [auth.UidIdentifier(uid) for uid in uids[start : start + MAX_USERS_PER_LOOKUP]]

        def call(batch: list[auth.UidIdentifier] = batch) -> Any:
            return auth.get_users(batch, app=_firebase_app(project))

        try:
            result = _bounded(call, timeout)
        except exceptions.FirebaseError as failed:
            raise _call_failure(failed) from None
        except google.auth.exceptions.GoogleAuthError as failed:
            raise AuthFailed("unavailable" if failed.retryable else "no_credentials") from None
        except ValueError:
            raise AuthFailed("no_credentials") from None
        found.update({user.uid: bool(user.disabled) for user in result.users})
    return found

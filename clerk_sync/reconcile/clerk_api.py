"""Clerk's Backend API through the official client (`clerk-backend-api`), for reconcile.

Bounded retries that the client's own policy lacks: a 429 waits as long as `Retry-After` says, 5xx
answers and network errors back off with jitter, everything else stops with Clerk's message. No
wait runs past the run's deadline: a wait that would stops the run instead (OutOfTime), checkpointed.
The client (pydantic, httpx) is imported when a `ClerkApi` is made, so the webhook never loads it.

Users are listed by cursor (`starting_after=<user id>`, oldest first), which Clerk added because a
large `offset` on `GET /users` eventually times out. clerk-backend-api 7.0.0 (the newest release)
has no parameter for it, so that one request goes through the client's own HTTP session, headers
and response model, with the same retries; every other listing keeps `offset` (Clerk offers no cursor).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

__all__ = [
    "PAGE_SIZE",
    "ClerkApi",
    "ClerkRefused",
    "ClerkUnavailable",
    "OutOfTime",
    "backoff",
    "retry_after_seconds",
]

PAGE_SIZE = 500
MAX_ATTEMPTS = 8
FIRST_ATTEMPTS = 3  # the run's first request: Clerk unreachable or the key refused stops it at once
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0
REQUEST_TIMEOUT_MS = 30_000

T = TypeVar("T")


class ClerkUnavailable(Exception):
    """Clerk kept failing, or refused the request (the message says which, never the key)."""


class ClerkRefused(ClerkUnavailable):
    """Clerk answered a 4xx other than 429 (`status`): retrying the same request cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OutOfTime(Exception):
    """Waiting as Clerk asks (or backing off) would run past the run's deadline: the run stops here."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def backoff(attempt: int) -> float:
    """Exponential with jitter: 0.5 s, 1 s, 2 s … capped, so many clients never retry in step."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


class ClerkApi:
    """Clerk's Backend API through the official client, with retries that honour 429 `Retry-After`."""

    def __init__(self, secret_key: str, server_url: str, note: Callable[[str], None] | None = None) -> None:
        # Imported here: the webhook never pays for the client (pydantic, httpx).
        import httpx  # noqa: PLC0415
        from clerk_backend_api import Clerk, models  # noqa: PLC0415
        from clerk_backend_api.utils import BackoffStrategy, RetryConfig  # noqa: PLC0415

        self._models = models
        self._transport_errors = (httpx.TransportError, models.NoResponseError)
        # Our own loop retries (it also honours 429, which the client's default policy does not).
        no_retries = RetryConfig("none", BackoffStrategy(0, 0, 1.0, 0), retry_connection_errors=False)
        self._clerk = Clerk(bearer_auth=secret_key, server_url=server_url, retry_config=no_retries)
        self._secret_key = secret_key
        self.note = note or (lambda _text: None)
        self.requests = 0
        # time.monotonic() past which no wait ends (the run's budget); None: unbounded.
        self.deadline: float | None = None

    def close(self) -> None:
        """Release the HTTP connections."""
        self._clerk.__exit__(None, None, None)  # type: ignore[no-untyped-call]

    def _call(
        self, what: str, call: Callable[[], T], *, missing_is_none: bool = False, attempts: int = MAX_ATTEMPTS
    ) -> T | None:
        """One request with bounded retries; None for a 404 when `missing_is_none`."""
        for attempt in range(1, attempts + 1):
            self.requests += 1
            try:
                return call()
            except self._models.ResponseValidationError as error:
                raise ClerkUnavailable(f"Clerk's answer to {what} did not fit the client's model: {error}") from None
            except self._models.ClerkBaseError as error:
                status = error.status_code
                if status == 404 and missing_is_none:
                    return None
                if status == 429:
                    wait, why = retry_after_seconds(error.headers.get("retry-after")) or backoff(attempt), "429"
                elif status >= 500:
                    wait, why = backoff(attempt), str(status)
                else:
                    detail = " ".join(error.body.split())[:300]
                    raise ClerkRefused(f"Clerk refused {what}: {status} {detail}", status) from None
            except self._transport_errors as error:
                wait, why = backoff(attempt), type(error).__name__
            if attempt == attempts:
                raise ClerkUnavailable(f"{what} still failing after {attempts} attempts ({why})")
            if self.deadline is not None and time.monotonic() + wait > self.deadline:
                raise OutOfTime(f"{what}: {why}, and waiting {wait:.0f} s would pass the run's budget", wait)
            self.note(f"{what}: {why}, retrying in {wait:.1f} s (attempt {attempt + 1} of {attempts})")
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _timeout_ms(self) -> int:
        """A request's timeout: 30 s, or what is left of the run's budget if less (at least 1 s)."""
        if self.deadline is None:
            return REQUEST_TIMEOUT_MS
        left_ms = int((self.deadline - time.monotonic()) * 1000)
        return max(1000, min(REQUEST_TIMEOUT_MS, left_ms))

    def instance(self) -> tuple[str, str]:
        """The key's instance: its id (`ins_…`) and environment (`development`, `production`).

        A run's first request: it gives up after FIRST_ATTEMPTS, so an unreachable Clerk or a
        refused key stops a run within seconds.
        """
        clerk = self._clerk
        found: Any = self._call(
            "GET /instance", lambda: clerk.instance_settings.get(timeout_ms=self._timeout_ms()), attempts=FIRST_ATTEMPTS
        )
        return str(found.id), str(found.environment_type)

    @staticmethod
    def _dump(item: Any) -> dict[str, Any]:
        dumped: dict[str, Any] = item.model_dump(mode="json", by_alias=True)
        return dumped

    def listing(self, kind: str, offset: int, order_by: str, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """One page of users, organizations, memberships, roles or permissions, as the webhooks carry them."""
        clerk, what = self._clerk, f"GET /{kind}?offset={offset}"
        if kind == "users":
            page: Any = self._call(
                what,
                lambda: clerk.users.list(
                    request={"limit": limit, "offset": offset, "order_by": order_by}, timeout_ms=self._timeout_ms()
                ),
            )
            return [self._dump(user) for user in page or []]
        if kind == "organizations":
            page = self._call(
                what,
                lambda: clerk.organizations.list(
                    limit=limit, offset=offset, order_by=order_by, timeout_ms=self._timeout_ms()
                ),
            )
        elif kind == "roles":
            page = self._call(
                f"GET /organization_roles?offset={offset}",
                lambda: clerk.organization_roles.list(
                    limit=limit, offset=offset, order_by=order_by, timeout_ms=self._timeout_ms()
                ),
            )
        elif kind == "permissions":
            page = self._call(
                f"GET /organization_permissions?offset={offset}",
                lambda: clerk.organization_permissions.list(
                    limit=limit, offset=offset, order_by=order_by, timeout_ms=self._timeout_ms()
                ),
            )
        else:
            what = f"GET /organization_memberships?offset={offset}"
            page = self._call(
                what,
                lambda: clerk.users.get_instance_organization_memberships(
                    limit=limit, offset=offset, order_by=order_by, timeout_ms=self._timeout_ms()
                ),
            )
        return [self._dump(item) for item in (page.data if page is not None else [])]

    def users_after(self, cursor: str | None, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """One page of users, oldest first, starting after user `cursor` (None: the first page).

        `GET /users?order_by=+created_at&starting_after=...`, sent through the client's own HTTP
        session (the pinned client has no `starting_after` yet) and checked against its `User` model
        (an answer that does not fit stops the run, as elsewhere); the users are handed on as Clerk
        sent them, since dumping the models back costs about 0.7 ms a user (12 minutes a million).
        """
        from clerk_backend_api.utils.unmarshal_json_response import unmarshal_json_response  # noqa: PLC0415

        models: Any = self._models
        configuration = self._clerk.sdk_configuration
        base_url, _ = configuration.get_server_details()
        params: dict[str, str | int] = {"limit": limit, "order_by": "+created_at"}
        if cursor is not None:
            params["starting_after"] = cursor
        headers = {
            "Authorization": f"Bearer {self._secret_key}",
            "Accept": "application/json",
            "user-agent": configuration.user_agent,
        }

        def get() -> list[dict[str, Any]]:
            client = configuration.client
            assert client is not None
            timeout = self._timeout_ms() / 1000
            request = client.build_request("GET", f"{base_url}/users", params=params, headers=headers, timeout=timeout)
            response = client.send(request)
            if response.status_code != 200:
                raise models.SDKError("API error occurred", response)
            unmarshal_json_response(list[models.User], response)  # raises ResponseValidationError
            users: list[dict[str, Any]] = response.json()
            return users

        what = "GET /users?order_by=+created_at" + (f"&starting_after={cursor}" if cursor else "")
        return self._call(what, get) or []

    def total(self, kind: str) -> int | None:
        """How many users Clerk has, for the progress bar (other kinds: unknown up front)."""
        if kind != "users":
            return None
        clerk = self._clerk
        count: Any = self._call("GET /users/count", lambda: clerk.users.count(timeout_ms=self._timeout_ms()))
        return int(count.total_count) if count is not None else None

    def fetch(self, kind: str, stored: dict[str, Any]) -> dict[str, Any] | None:
        """The object as Clerk has it now, or None when Clerk confirms it is gone (404)."""
        clerk = self._clerk
        if kind == "users":
            user_id = str(stored["clerk_id"])
            found: Any = self._call(
                f"GET /users/{user_id}",
                lambda: clerk.users.get(user_id=user_id, timeout_ms=self._timeout_ms()),
                missing_is_none=True,
            )
            return None if found is None else self._dump(found)
        if kind == "organizations":
            organization_id = str(stored["clerk_id"])
            found = self._call(
                f"GET /organizations/{organization_id}",
                lambda: clerk.organizations.get(organization_id=organization_id, timeout_ms=self._timeout_ms()),
                missing_is_none=True,
            )
            return None if found is None else self._dump(found)
        if kind == "roles":
            role_id = str(stored["clerk_id"])
            found = self._call(
                f"GET /organization_roles/{role_id}",
                lambda: clerk.organization_roles.get(organization_role_id=role_id, timeout_ms=self._timeout_ms()),
                missing_is_none=True,
            )
            return None if found is None else self._dump(found)
        if kind == "permissions":
            permission_id = str(stored["clerk_id"])
            found = self._call(
                f"GET /organization_permissions/{permission_id}",
                lambda: clerk.organization_permissions.get(permission_id=permission_id, timeout_ms=self._timeout_ms()),
                missing_is_none=True,
            )
            return None if found is None else self._dump(found)
        organization_id, user_id = str(stored["organization_id"]), str(stored["user_id"])
        listed: Any = self._call(
            f"GET /organizations/{organization_id}/memberships?user_id={user_id}",
            lambda: clerk.organization_memberships.list(
                organization_id=organization_id, user_id=[user_id], limit=10, timeout_ms=self._timeout_ms()
            ),
            missing_is_none=True,
        )
        members = [self._dump(item) for item in (listed.data if listed is not None else [])]
        return next((member for member in members if member["public_user_data"]["user_id"] == user_id), None)

    def plans(self) -> list[dict[str, Any]]:
        """Every billing plan (users' and organizations'), with its features."""
        clerk = self._clerk
        found: list[dict[str, Any]] = []

        def page_at(offset: int) -> Any:
            return clerk.billing.list_plans(
                paginated=True, limit=PAGE_SIZE, offset=offset, timeout_ms=self._timeout_ms()
            )

        while True:
            offset = len(found)
            page: Any = self._call(f"GET /billing/plans?offset={offset}", functools.partial(page_at, offset))
            data = [self._dump(plan) for plan in (page.data if page is not None else [])]
            found += data
            if len(data) < PAGE_SIZE:
                return found

    def subscription_items(self, offset: int, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """One page of every subscription item of the instance (free plans' too), each naming its payer."""
        clerk = self._clerk
        page: Any = self._call(
            f"GET /billing/subscription_items?offset={offset}",
            lambda: clerk.billing.list_subscription_items(
                paginated=True, limit=limit, offset=offset, include_free=True, timeout_ms=self._timeout_ms()
            ),
        )
        return [self._dump(item) for item in (page.data if page is not None else [])]

    def subscription(self, payer_type: str, payer_id: str) -> dict[str, Any] | None:
        """A user's or organization's subscription as Clerk has it now; None when Clerk answers 404."""
        clerk = self._clerk
        if payer_type == "user":
            found: Any = self._call(
                f"GET /users/{payer_id}/billing/subscription",
                lambda: clerk.users.get_billing_subscription(user_id=payer_id, timeout_ms=self._timeout_ms()),
                missing_is_none=True,
            )
        else:
            found = self._call(
                f"GET /organizations/{payer_id}/billing/subscription",
                lambda: clerk.organizations.get_billing_subscription(
                    organization_id=payer_id, timeout_ms=self._timeout_ms()
                ),
                missing_is_none=True,
            )
        return None if found is None else self._dump(found)

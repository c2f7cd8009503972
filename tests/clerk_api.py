"""A local stand-in for Clerk's Backend API (`GET /v1/users`, `/v1/users/count`) on loopback.

It serves the documented response shapes, so the real `clerk-backend-api` client parses them, and
answers chosen list requests with a fault (429 + Retry-After, 500) to exercise the retries.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_KEY = "sk_test_backfill0000000000000000000000000000"
BASE_MS = 1_756_382_400_000


def api_user(
    user_id: str,
    *,
    email: str | None,
    created_at: int,
    updated_at: int,
    first_name: str | None = "Grace",
    last_name: str | None = "Hopper",
) -> dict[str, Any]:
    """A User object exactly as `GET /v1/users` returns it (verification objects carry `object`)."""
    email_id = f"idn_{user_id}_email"
    addresses = (
        [
            {
                "id": email_id,
                "object": "email_address",
                "email_address": email,
                "reserved": False,
                "verification": {
                    "object": "verification_otp",
                    "status": "verified",
                    "strategy": "email_code",
                    "attempts": 1,
                    "expire_at": created_at + 600_000,
                },
                "linked_to": [],
                "matches_sso_connection": False,
                "created_at": created_at,
                "updated_at": updated_at,
            }
        ]
        if email
        else []
    )
    return {
        "id": user_id,
        "object": "user",
        "external_id": None,
        "primary_email_address_id": email_id if email else None,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "username": None,
        "first_name": first_name,
        "last_name": last_name,
        "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
        "has_image": False,
        "public_metadata": {"plan": "pro"},
        "private_metadata": {"stripe_customer": "cus_backfill_secret"},
        "unsafe_metadata": {},
        "email_addresses": addresses,
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "last_sign_in_at": updated_at - 1000,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "created_at": created_at,
        "updated_at": updated_at,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "last_active_at": updated_at,
        "legal_accepted_at": None,
        "locale": None,
    }


@dataclass
class Request:
    """One request the fake API saw."""

    at: float
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int


@dataclass
class FakeClerk:
    """The users the fake API serves and the faults it injects (keyed by n-th `/v1/users` list request)."""

    users: list[dict[str, Any]]
    faults: dict[int, tuple[int, dict[str, str]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def list_requests(self) -> list[Request]:
        """The `GET /v1/users` requests, in arrival order."""
        return [request for request in self.requests if request.path == "/v1/users"]

    def answer(self, path: str, query: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], Any]:
        """Status, headers and JSON body for one request, as Clerk documents them."""
        if authorization != f"Bearer {SECRET_KEY}":
            return 401, {}, _errors("authentication_invalid", "Invalid authentication")
        if path == "/v1/users/count":
            return 200, {}, {"object": "total_count", "total_count": len(self.users)}
        if path != "/v1/users":
            return 404, {}, _errors("resource_not_found", "Not found")
        index = len(self.list_requests()) - 1
        if index in self.faults:
            status, headers = self.faults[index]
            return status, headers, _errors("rate_limit_exceeded" if status == 429 else "internal_error", "fault")
        limit = int(query.get("limit", "10"))
        offset = int(query.get("offset", "0"))
        if not 1 <= limit <= 500 or offset < 0:
            return 422, {}, _errors("form_param_value_invalid", "limit must be 1-500")
        descending = query.get("order_by", "-created_at").startswith("-")
        ordered = sorted(self.users, key=lambda user: (user["created_at"], user["id"]), reverse=descending)
        return 200, {}, ordered[offset : offset + limit]


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "long_message": message, "code": code}], "meta": {}}


@contextmanager
def serve(fake: FakeClerk) -> Iterator[FakeClerk]:
    """Serve `fake` on a free loopback port (its `url` is the client's server_url) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            with fake.lock:
                record = Request(time.monotonic(), parsed.path, query, self.headers.get("Authorization"), 0)
                fake.requests.append(record)
                status, headers, body = fake.answer(parsed.path, query, record.authorization)
                record.status = status
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on `fake.requests` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

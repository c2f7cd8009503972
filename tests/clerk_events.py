"""Realistic Clerk event bodies and Svix-signed headers for tests (signed by the `svix` package)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASE_MS = 1_756_382_400_000
_ids = itertools.count(1)


def new_message_id() -> str:
    """A fresh Svix-style message id (`msg_...`), unique within the test run."""
    return f"msg_test{next(_ids):08d}"


def new_user_id() -> str:
    """A fresh Clerk-style user id, unique within the test run."""
    return f"user_test{next(_ids):08d}"


def email_entry(address: str, entry_id: str, *, verified: bool = True) -> dict[str, Any]:
    """One `email_addresses[]` entry as Clerk sends it."""
    return {
        "id": entry_id,
        "object": "email_address",
        "email_address": address,
        "linked_to": [],
        "reserved": False,
        "verification": {"status": "verified" if verified else "unverified", "strategy": "email_code"},
    }


def user_data(
    user_id: str,
    *,
    emails: list[str] | None = None,
    primary: int | None = 0,
    phones: list[str] | None = None,
    updated_at: int = BASE_MS,
    first_name: str | None = "Alice",
    last_name: str | None = "Anders",
    **extra: Any,
) -> dict[str, Any]:
    """A full Clerk User object; `primary` indexes `emails` (None: no primary email)."""
    emails = ["alice@example.com"] if emails is None else emails
    email_entries = [email_entry(address, f"idn_{user_id}_{index}") for index, address in enumerate(emails)]
    phone_entries = [
        {"id": f"idn_{user_id}_phone{index}", "object": "phone_number", "phone_number": number}
        for index, number in enumerate(phones or [])
    ]
    data: dict[str, Any] = {
        "id": user_id,
        "object": "user",
        "external_id": None,
        "email_addresses": email_entries,
        "primary_email_address_id": email_entries[primary]["id"] if primary is not None and emails else None,
        "phone_numbers": phone_entries,
        "primary_phone_number_id": phone_entries[0]["id"] if phone_entries else None,
        "username": None,
        "first_name": first_name,
        "last_name": last_name,
        "image_url": "https://img.clerk.com/example",
        "public_metadata": {},
        "private_metadata": {"stripe_customer": "cus_secret"},
        "unsafe_metadata": {},
        "banned": False,
        "locked": False,
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
        "last_sign_in_at": None,
        "web3_wallets": [],
    }
    data.update(extra)
    return data


def envelope(event_type: str, data: dict[str, Any], *, timestamp: int | None = None) -> dict[str, Any]:
    """The Clerk event envelope around `data`."""
    return {
        "data": data,
        "object": "event",
        "type": event_type,
        "timestamp": timestamp if timestamp is not None else BASE_MS,
        "instance_id": "ins_test",
        "event_attributes": {"http_request": {"client_ip": "203.0.113.10", "user_agent": "pytest"}},
    }


def user_event(event_type: str, user_id: str, **fields: Any) -> str:
    """A `user.created` / `user.updated` body as a JSON string."""
    return json.dumps(envelope(event_type, user_data(user_id, **fields)))


def deletion_event(user_id: str, *, timestamp: int = BASE_MS + 1_000_000) -> str:
    """A `user.deleted` body: Clerk sends only the id."""
    return json.dumps(envelope("user.deleted", {"deleted": True, "id": user_id, "object": "user"}, timestamp=timestamp))


def signed_headers(
    body: str,
    *,
    message_id: str | None = None,
    secret: str = SECRET,
    timestamp: datetime | None = None,
    prefix: str = "svix",
) -> dict[str, str]:
    """Headers exactly as Svix sends them, signed now unless `timestamp` is given."""
    message_id = message_id or new_message_id()
    when = timestamp or datetime.now(UTC)
    return {
        f"{prefix}-id": message_id,
        f"{prefix}-timestamp": str(int(when.timestamp())),
        f"{prefix}-signature": Webhook(secret).sign(message_id, when, body),
        "content-type": "application/json",
    }

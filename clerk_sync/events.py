"""Clerk webhook JSON turned into the few records the store understands, validated once here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "IgnoredEvent",
    "MalformedEvent",
    "UserDeletion",
    "UserUpsert",
    "normalise_email",
    "parse_event",
]

USER_UPSERT_TYPES = frozenset({"user.created", "user.updated"})
USER_DELETED = "user.deleted"
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Firestore Timestamps span years 1..9999; anything outside is not a real Clerk time.
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999
FIRESTORE_MAX_DEPTH = 20
# Firestore refuses field names like `__x__` and field paths over 1500 bytes (InvalidArgument).
FIRESTORE_RESERVED_NAME = re.compile(r"__.+__", re.DOTALL)
FIRESTORE_MAX_PATH_BYTES = 1500
# JSON may spell an unpaired surrogate as `\ud800`; such a string cannot be sent to Firestore.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Firestore refuses documents over 1 MiB (InvalidArgument); 1 KiB is left for the name and synced_at.
MAX_DOCUMENT_BYTES = 1024 * 1024 - 1024
INT64 = (-(2**63), 2**63 - 1)


class MalformedEvent(ValueError):
    """A verified body that is not a usable Clerk event; the message is safe to log."""


@dataclass(frozen=True)
class UserUpsert:
    """`user.created` / `user.updated`: the whole user document, ordered by `updated_at`."""

    event_type: str
    user_id: str
    updated_at: datetime
    email_key: str | None
    document: dict[str, Any]


@dataclass(frozen=True)
class UserDeletion:
    """`user.deleted`: only the id survives in Clerk's payload."""

    event_type: str
    user_id: str
    deleted_at: datetime | None


@dataclass(frozen=True)
class IgnoredEvent:
    """Any other event type: acknowledged so Svix stops sending it, never stored."""

    event_type: str
    user_id: None = None


Event = UserUpsert | UserDeletion | IgnoredEvent


def normalise_email(address: str) -> str | None:
    """The key that makes `Alice@Example.com ` and `alice@example.com` the same address."""
    key = address.strip().lower()
    return key or None


def parse_event(body: bytes) -> Event:
    """Parse a verified body; raises MalformedEvent for anything a retry cannot fix."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedEvent("body is not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedEvent("body is not a JSON object")
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEvent("missing type")
    data = envelope.get("data")
    if event_type in USER_UPSERT_TYPES:
        data = _user_data(data)
        if SURROGATE_ESCAPE.search(body) and not _encodable(data):
            # Not valid Unicode (RFC 8259 8.2); Firestore cannot store it and Clerk never sends it.
            raise MalformedEvent("data holds an unpaired surrogate")
        return _user_upsert(event_type, data)
    if event_type == USER_DELETED:
        data = _user_data(data)
        return UserDeletion(
            event_type=event_type,
            user_id=data["id"],
            deleted_at=_optional_time(envelope, "timestamp"),
        )
    return IgnoredEvent(event_type=event_type)


def _user_data(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    user_id = data.get("id")
    if not isinstance(user_id, str) or not user_id:
        raise MalformedEvent("missing data.id")
    if not USER_ID.fullmatch(user_id) or FIRESTORE_RESERVED_NAME.fullmatch(user_id):
        raise MalformedEvent("data.id is not a Clerk user id")
    return data


def _user_upsert(event_type: str, data: dict[str, Any]) -> UserUpsert:
    updated_at = _optional_time(data, "updated_at")
    if updated_at is None:
        raise MalformedEvent("missing data.updated_at")
    addresses = _entries(data, "email_addresses", "email_address")
    phones = _entries(data, "phone_numbers", "phone_number")
    primary_email = _primary(addresses, data, "primary_email_address_id")
    primary_phone = _primary(phones, data, "primary_phone_number_id")
    email = primary_email["email_address"] if primary_email else None
    verification = primary_email.get("verification") if primary_email else None
    document: dict[str, Any] = {
        "clerk_id": data["id"],
        "email": email,
        "email_verified": isinstance(verification, dict) and verification.get("status") == "verified",
        "email_addresses": [entry["email_address"] for entry in addresses],
        "phone_number": primary_phone["phone_number"] if primary_phone else None,
        "username": _optional_str(data, "username"),
        "first_name": _optional_str(data, "first_name"),
        "last_name": _optional_str(data, "last_name"),
        "image_url": _optional_str(data, "image_url"),
        "external_id": _optional_str(data, "external_id"),
        "public_metadata": _metadata(data, "public_metadata"),
        "unsafe_metadata": _metadata(data, "unsafe_metadata"),
        "banned": _flag(data, "banned"),
        "locked": _flag(data, "locked"),
        "created_at": _optional_time(data, "created_at"),
        "updated_at": updated_at,
        "last_sign_in_at": _optional_time(data, "last_sign_in_at"),
    }
    if _stored_bytes(document) > MAX_DOCUMENT_BYTES:
        # A body under 1 MiB can still make a bigger document (the email is kept twice): refuse, Svix cannot fix it.
        raise MalformedEvent("user document over Firestore's 1 MiB limit")
    return UserUpsert(
        event_type=event_type,
        user_id=data["id"],
        updated_at=updated_at,
        email_key=normalise_email(email) if email else None,
        document=document,
    )


def _entries(data: dict[str, Any], field: str, value_field: str) -> list[dict[str, Any]]:
    entries = data.get(field)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MalformedEvent(f"data.{field} is not a list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get(value_field), str):
            raise MalformedEvent(f"data.{field} has an entry without {value_field}")
    return entries


def _primary(entries: list[dict[str, Any]], data: dict[str, Any], id_field: str) -> dict[str, Any] | None:
    """The entry Clerk marks primary by id; `entries[0]` is not necessarily it."""
    primary_id = data.get(id_field)
    if primary_id is None:
        return None
    if not isinstance(primary_id, str):
        raise MalformedEvent(f"data.{id_field} is not a string")
    return next((entry for entry in entries if entry.get("id") == primary_id), None)


def _optional_str(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(f"data.{field} is not a string")


def _flag(data: dict[str, Any], field: str) -> bool:
    value = data.get(field, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise MalformedEvent(f"data.{field} is not a boolean")


def _optional_time(data: dict[str, Any], field: str) -> datetime | None:
    """Clerk sends epoch milliseconds; Firestore wants an aware datetime (kept exact to the ms)."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MS <= value <= MAX_MS:
        raise MalformedEvent(f"{field} is not epoch milliseconds")
    return EPOCH + timedelta(milliseconds=value)


def _metadata(data: dict[str, Any], field: str) -> dict[str, Any] | str:
    """Metadata as a map, or as its JSON text when Firestore cannot hold it (kept, not dropped)."""
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedEvent(f"data.{field} is not an object")
    if _storable(value, depth=1, in_array=False, path_bytes=len(field)):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _storable(value: object, *, depth: int, in_array: bool, path_bytes: int) -> bool:
    """Whether Firestore accepts the value: no arrays in arrays, 20 levels, 64-bit integers, valid names."""
    if depth > FIRESTORE_MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(
            _storable_name(key, path_bytes)
            and _storable(item, depth=depth + 1, in_array=False, path_bytes=path_bytes + _name_bytes(key))
            for key, item in value.items()
        )
    if isinstance(value, list):
        return not in_array and all(
            _storable(item, depth=depth + 1, in_array=True, path_bytes=path_bytes) for item in value
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return INT64[0] <= value <= INT64[1]
    return True


def _name_bytes(name: str) -> int:
    """A field name's share of a field path, counted high: a dot, backquotes and escapes."""
    return len(name.encode("utf-8", "surrogatepass")) + 3 + name.count("`") + name.count("\\")


def _storable_name(name: str, path_bytes: int) -> bool:
    return (
        bool(name)
        and not FIRESTORE_RESERVED_NAME.fullmatch(name)
        and path_bytes + _name_bytes(name) <= FIRESTORE_MAX_PATH_BYTES
    )


def _stored_bytes(value: object) -> int:
    """Firestore's storage size of a value: strings and names count their UTF-8 bytes plus one."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 1
    if isinstance(value, dict):
        return sum(_stored_bytes(name) + _stored_bytes(item) for name, item in value.items())
    if isinstance(value, list):
        return sum(_stored_bytes(item) for item in value)
    return 1 if value is None or isinstance(value, bool) else 8


def _encodable(value: dict[str, Any]) -> bool:
    """Whether every string survives UTF-8, as Firestore's wire format needs."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True

"""Clerk JSON values checked once and turned into values Firestore accepts, for every kind of object.

A verified body that Firestore would refuse is `MalformedEvent` (400) here, never a 503 that Svix
retries for a day; metadata Firestore cannot hold as a map is kept as its JSON text instead.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from clerk_sync import ids

__all__ = [
    "EPOCH",
    "MalformedEvent",
    "check_document_size",
    "check_encodable",
    "clerk_id",
    "data_of",
    "flag",
    "lenient_time",
    "metadata",
    "optional_int",
    "optional_str",
    "optional_time",
    "required_time",
    "string_list",
]

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
# Firestore refuses documents over 1 MiB (InvalidArgument); 1 KiB is left for the name and ours.
MAX_DOCUMENT_BYTES = 1024 * 1024 - 1024
INT64 = (-(2**63), 2**63 - 1)
# Magnitudes that tell an epoch in seconds from milliseconds, microseconds or nanoseconds:
# 1e11 s is the year 5138, 1e11 ms is 1973; Clerk's times are all after 2000.
SECONDS_BELOW = 1e11
MILLISECONDS_BELOW = 1e14
MICROSECONDS_BELOW = 1e17


class MalformedEvent(ValueError):
    """A verified body that is not a usable Clerk event; the message is safe to log (no values)."""


def clerk_id(value: object, where: str, what: str) -> str:
    """A Clerk id (`user_…`, `org_…`) that will name a document as it is; `what` says which kind."""
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"missing {where}")
    if not ids.is_clerk_id(value):
        raise MalformedEvent(f"{where} is not a Clerk {what} id")
    return value


def optional_str(data: dict[str, Any], field: str, where: str = "data") -> str | None:
    """A string or null field; anything else is malformed."""
    value = data.get(field)
    if value is None or isinstance(value, str):
        return value
    raise MalformedEvent(f"{where}.{field} is not a string")


def optional_int(data: dict[str, Any], field: str, where: str = "data") -> int | None:
    """An integer or null field (a 64-bit one: Firestore holds nothing bigger)."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
        raise MalformedEvent(f"{where}.{field} is not an integer")
    return value


def flag(data: dict[str, Any], field: str, where: str = "data") -> bool:
    """A boolean field, false when missing or null."""
    value = data.get(field, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise MalformedEvent(f"{where}.{field} is not a boolean")


def string_list(data: dict[str, Any], field: str, where: str = "data") -> list[str]:
    """A list of strings, empty when missing or null."""
    value = data.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedEvent(f"{where}.{field} is not a list of strings")
    return value


def optional_time(data: dict[str, Any], field: str, where: str = "data") -> datetime | None:
    """Clerk sends epoch milliseconds; Firestore wants an aware datetime (kept exact to the ms)."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MS <= value <= MAX_MS:
        raise MalformedEvent(f"{field} is not epoch milliseconds")
    return EPOCH + timedelta(milliseconds=value)


def required_time(data: dict[str, Any], field: str, where: str = "data") -> datetime:
    """A time the ordering depends on (`updated_at`): without it the event cannot be placed."""
    value = optional_time(data, field, where)
    if value is None:
        raise MalformedEvent(f"missing {where}.{field}")
    return value


def lenient_time(value: object) -> datetime | None:
    """An informational time in any unit Clerk has used (seconds, ms, µs, ns), or None if unusable.

    Nothing orders by it, so it must never fail an event: a deletion refused because of its
    envelope `timestamp` would keep a person's data forever.
    """
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 < value < MICROSECONDS_BELOW * 1_000_000:
        return None  # beyond any unit's range (and past float's, where math.isfinite would raise)
    if not math.isfinite(value) or value <= 0:
        return None
    if value < SECONDS_BELOW:
        milliseconds = value * 1000
    elif value < MILLISECONDS_BELOW:
        milliseconds = value
    elif value < MICROSECONDS_BELOW:
        milliseconds = value / 1000
    else:
        milliseconds = value / 1_000_000
    if not MIN_MS <= milliseconds <= MAX_MS:
        return None
    return EPOCH + timedelta(milliseconds=round(milliseconds))


def metadata(data: dict[str, Any], field: str, where: str = "data") -> dict[str, Any] | str:
    """Metadata as a map, or as its JSON text when Firestore cannot hold it (kept, not dropped)."""
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedEvent(f"{where}.{field} is not an object")
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


def stored_bytes(value: object) -> int:
    """Firestore's storage size of a value: strings and names count their UTF-8 bytes plus one."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 1
    if isinstance(value, dict):
        return sum(stored_bytes(name) + stored_bytes(item) for name, item in value.items())
    if isinstance(value, list):
        return sum(stored_bytes(item) for item in value)
    return 1 if value is None or isinstance(value, bool) else 8


# Every value of a synced document comes from the body: a string's UTF-8 is never longer than its
# JSON spelling, a number or time takes 8 bytes from at least 1 of JSON, and one value (a user's
# primary email) is kept twice. So a document is at most this many times its body, plus its names.
BYTES_PER_BODY_BYTE = 8
NAMES_BYTES = 4096


def check_document_size(document: dict[str, Any], kind: str, body_bytes: int | None = None) -> None:
    """A body under 1 MiB can still make a bigger document: refuse it, Svix cannot fix it.

    With `body_bytes`, a body too small to make an oversized document is not counted at all.
    """
    if body_bytes is not None and body_bytes * BYTES_PER_BODY_BYTE + NAMES_BYTES <= MAX_DOCUMENT_BYTES:
        return
    if stored_bytes(document) > MAX_DOCUMENT_BYTES:
        raise MalformedEvent(f"{kind} document over Firestore's 1 MiB limit")


def data_of(envelope: dict[str, Any], body: bytes | None = None) -> dict[str, Any]:
    """The event's `data` object (with `body`, one Firestore can store): anything else no retry can fix."""
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    if body is not None:
        check_encodable(body, data)
    return data


def check_encodable(body: bytes, data: dict[str, Any]) -> None:
    """An unpaired surrogate (`\\ud800` in the JSON) is not valid Unicode and Firestore cannot store it."""
    if not SURROGATE_ESCAPE.search(body):
        return
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise MalformedEvent("data holds an unpaired surrogate") from None

"""Document ids: Clerk ids used as they are, anything else (emails, svix ids) encoded to a safe id."""

from __future__ import annotations

import hashlib
import re

__all__ = ["CLERK_ID", "document_id", "is_clerk_id"]

# Clerk ids (`user_2abc…`, `org_2abc…`, `orgmem_2abc…`) are URL-safe; they double as document ids.
CLERK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
RESERVED_ID = re.compile(r"__.+__", re.DOTALL)
SAFE_ID_CHARACTERS = re.compile(r"[A-Za-z0-9@._+-]")
MAX_ID_BYTES = 1500


def is_clerk_id(value: object, prefix: str = "") -> bool:
    """Whether `value` can be a Clerk id (and so a document id as it is); `prefix` like `user_`."""
    return (
        isinstance(value, str)
        and value.startswith(prefix)
        and CLERK_ID.fullmatch(value) is not None
        and RESERVED_ID.fullmatch(value) is None
    )


def document_id(text: str) -> str:
    """A readable, collision-free document id for any string (emails may hold `/`, `__x__`...).

    Characters outside `[A-Za-z0-9@._+-]` are percent-encoded, as is `%` itself; a leading
    `_` or `.` is encoded too, which rules out the reserved `__x__`, `.` and `..` ids. An id too
    long for Firestore becomes a hash whose `%s` prefix the encoding never produces.
    """
    encoded = "".join(
        char if SAFE_ID_CHARACTERS.fullmatch(char) else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )
    if encoded[:1] in {"_", "."}:
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    if not encoded or len(encoded.encode()) > MAX_ID_BYTES:
        return "%sha256-" + hashlib.sha256(text.encode()).hexdigest()
    return encoded

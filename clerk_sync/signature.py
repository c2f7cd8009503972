"""Svix signature checks on the raw request bytes, before anything trusts (or even decodes) the body.

The scheme (Svix, Standard Webhooks): HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
base64-decoded secret after `whsec_`, sent as space-separated `v1,<base64>` entries. The HMAC is
fed the body's bytes as they are: no decoded `str`, no joined copy, so an unauthenticated 1 MiB body
costs no more memory here than its own bytes, whatever characters it holds.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MAX_ID_LENGTH",
    "TOLERANCE_SECONDS",
    "HeaderLookup",
    "SignatureRejected",
    "SignedMessage",
    "signing_key",
    "verify",
]

TOLERANCE_SECONDS = 5 * 60
MAX_ID_LENGTH = 256
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
# Svix sends whole seconds; a fraction is tolerated (and floored) as the reference library does.
TIMESTAMP = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
SIGNATURE_BYTES = hashlib.sha256().digest_size


class HeaderLookup(Protocol):
    """Request headers looked up case-insensitively, as Flask's and a plain dict of lower-case names do."""

    def get(self, key: str, /) -> str | None: ...


class SignatureRejected(Exception):
    """The request is not a genuine, fresh Svix delivery; `reason` says why (never secret data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignedMessage:
    """The delivery's identity once its signature checked out."""

    message_id: str
    timestamp: int


def signing_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret; raises ValueError for anything else (an `sk_` key, say)."""
    secret = secret.strip()
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("signing secret is not a whsec_ value")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Svix secrets are padded base64; unpadded ones are accepted as the reference library does.
        key = binascii.a2b_base64(encoded + "=" * (-len(encoded) % 4), strict_mode=True)
    except binascii.Error:
        raise ValueError("signing secret is not a valid whsec_ value (not base64)") from None
    if len(key) < 8:
        raise ValueError("signing secret is not a valid whsec_ value (too short)")
    return key


def _header(headers: HeaderLookup, name: str) -> str:
    """Svix sends `svix-*`; the Standard Webhooks spelling `webhook-*` is the same scheme."""
    return (headers.get(f"svix-{name}") or headers.get(f"webhook-{name}") or "").strip()


def _offered_signatures(header: str) -> list[bytes]:
    """The `v1` signatures offered; raises SignatureRejected for an entry that is not `version,base64`."""
    offered = []
    for entry in header.split(" "):
        version, comma, encoded = entry.partition(",")
        if not comma or not version or "," in encoded:
            raise SignatureRejected("malformed_signature")
        if version != "v1":
            continue  # another scheme (Svix's asymmetric `v1a`): not ours to check
        try:
            offered.append(binascii.a2b_base64(encoded, strict_mode=True))
        except ValueError:  # binascii.Error, or a plain ValueError for non-ASCII text
            raise SignatureRejected("malformed_signature") from None
    return offered


def verify(key: bytes, body: bytes, headers: HeaderLookup) -> SignedMessage:
    """Check id, timestamp and signature of `body`; raises SignatureRejected, never anything else.

    Reasons: `missing_headers`, `invalid_timestamp`, `stale_timestamp`, `malformed_signature`,
    `bad_signature`.
    """
    message_id = _header(headers, "id")
    timestamp_text = _header(headers, "timestamp")
    signature_header = _header(headers, "signature")
    if not (message_id and timestamp_text and signature_header):
        raise SignatureRejected("missing_headers")
    if len(message_id) > MAX_ID_LENGTH:
        raise SignatureRejected("missing_headers")
    if not TIMESTAMP.fullmatch(timestamp_text):
        raise SignatureRejected("invalid_timestamp")
    timestamp = math.floor(float(timestamp_text))
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        raise SignatureRejected("stale_timestamp")
    offered = _offered_signatures(signature_header)
    try:
        prefix = f"{message_id}.{timestamp}.".encode()
    except UnicodeEncodeError:  # a lone surrogate smuggled into the id: nobody could have signed it
        raise SignatureRejected("bad_signature") from None
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(body)  # the body's own buffer: hashed in place, never copied
    expected = mac.digest()
    # Compare with every entry (no early exit), in constant time each.
    matched = False
    for candidate in offered:
        matched |= len(candidate) == SIGNATURE_BYTES and hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureRejected("bad_signature")
    return SignedMessage(message_id=message_id, timestamp=timestamp)

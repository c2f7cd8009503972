"""Svix signature checks on the raw request bytes, before anything trusts the body."""

from __future__ import annotations

import binascii
import math
import time
from dataclasses import dataclass
from typing import Protocol

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

__all__ = ["TOLERANCE_SECONDS", "HeaderLookup", "SignatureRejected", "SignedMessage", "Webhook", "verifier", "verify"]

TOLERANCE_SECONDS = 5 * 60
MAX_ID_LENGTH = 256


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


def verifier(secret: str) -> Webhook:
    """Build the verifier once per secret; raises ValueError for a secret that is not base64."""
    try:
        return Webhook(secret)
    except (binascii.Error, ValueError, RuntimeError, EmptyWebhookSecretError) as error:
        raise ValueError("signing secret is not a valid whsec_ value") from error


def _header(headers: HeaderLookup, name: str) -> str:
    """Svix sends `svix-*`; the Standard Webhooks spelling `webhook-*` is the same scheme."""
    return (headers.get(f"svix-{name}") or headers.get(f"webhook-{name}") or "").strip()


def verify(webhook: Webhook, body: bytes, headers: HeaderLookup) -> SignedMessage:
    """Check id, timestamp and signature of `body`; raises SignatureRejected, never anything else.

    Reasons: `missing_headers`,
    `invalid_timestamp`, `stale_timestamp`, `malformed_signature`, `malformed_body`, `bad_signature`.
    """
    message_id = _header(headers, "id")
    timestamp_text = _header(headers, "timestamp")
    signature = _header(headers, "signature")
    if not (message_id and timestamp_text and signature):
        raise SignatureRejected("missing_headers")
    if len(message_id) > MAX_ID_LENGTH:
        raise SignatureRejected("missing_headers")
    try:
        timestamp = float(timestamp_text)
    except ValueError:
        raise SignatureRejected("invalid_timestamp") from None
    if not math.isfinite(timestamp):
        raise SignatureRejected("invalid_timestamp")
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        raise SignatureRejected("stale_timestamp")
    try:
        webhook.verify(
            body,
            {"webhook-id": message_id, "webhook-timestamp": timestamp_text, "webhook-signature": signature},
            json_parse=False,
        )
    except WebhookVerificationError:
        raise SignatureRejected("bad_signature") from None
    except UnicodeDecodeError:
        raise SignatureRejected("malformed_body") from None
    except ValueError:
        # A signature entry without a comma, bad base64 or a non-UTF-8 body: malformed, not a bug.
        raise SignatureRejected("malformed_signature") from None
    return SignedMessage(message_id=message_id, timestamp=math.floor(timestamp))

"""Svix signature checks on raw bytes, with requests signed by the `svix` package (no emulator)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from clerk_events import SECRET, new_message_id, new_user_id, signed_headers, user_event
from svix.webhooks import Webhook as SvixWebhook

from clerk_sync import signature

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmctLQ=="


@pytest.fixture(scope="module")
def webhook() -> bytes:
    """The key the function decodes from its configured secret."""
    return signature.signing_key(SECRET)


def _reason(webhook: bytes, body: bytes, headers: dict[str, str]) -> str:
    with pytest.raises(signature.SignatureRejected) as rejected:
        signature.verify(webhook, body, headers)
    return rejected.value.reason


def test_request_signed_by_svix_verifies(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    message_id = new_message_id()
    headers = signed_headers(body, message_id=message_id)

    signed = signature.verify(webhook, body.encode(), headers)

    assert signed.message_id == message_id
    assert signed.timestamp == int(headers["svix-timestamp"])


def test_unbranded_webhook_headers_verify(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body, prefix="webhook")

    signed = signature.verify(webhook, body.encode(), headers)

    assert signed.message_id == headers["webhook-id"]


def test_any_of_several_signatures_may_match(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    when = datetime.fromtimestamp(int(headers["svix-timestamp"]), UTC)
    rotated = SvixWebhook(OTHER_SECRET).sign(headers["svix-id"], when, body)
    headers["svix-signature"] = f"v1a,ignored {rotated} {headers['svix-signature']}"

    signed = signature.verify(webhook, body.encode(), headers)

    assert signed.message_id == headers["svix-id"]


def test_signature_four_minutes_old_is_within_tolerance(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body, timestamp=datetime.now(UTC) - timedelta(minutes=4))

    signed = signature.verify(webhook, body.encode(), headers)

    assert signed.timestamp == int(headers["svix-timestamp"])


def test_signature_by_another_secret_is_bad_signature(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())

    assert _reason(webhook, body.encode(), signed_headers(body, secret=OTHER_SECRET)) == "bad_signature"


def test_reserialised_body_is_bad_signature(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    reserialised = json.dumps(json.loads(body), indent=1).encode()

    assert _reason(webhook, reserialised, signed_headers(body)) == "bad_signature"


def test_changed_message_id_is_bad_signature(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = {**signed_headers(body), "svix-id": new_message_id()}

    assert _reason(webhook, body.encode(), headers) == "bad_signature"


def test_changed_timestamp_is_bad_signature(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    headers["svix-timestamp"] = str(int(headers["svix-timestamp"]) - 1)

    assert _reason(webhook, body.encode(), headers) == "bad_signature"


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_missing_header_is_rejected(webhook: bytes, missing: str) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    del headers[missing]

    assert _reason(webhook, body.encode(), headers) == "missing_headers"


def test_blank_header_counts_as_missing(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = {**signed_headers(body), "svix-id": "  "}

    assert _reason(webhook, body.encode(), headers) == "missing_headers"


def test_overlong_message_id_is_rejected_before_any_hmac(webhook: bytes) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body, message_id="msg_" + "x" * 300)

    assert _reason(webhook, body.encode(), headers) == "missing_headers"


@pytest.mark.parametrize("timestamp", ["soon", "", "nan", "inf", "-inf", "0x10"])
def test_non_numeric_timestamp_is_invalid(webhook: bytes, timestamp: str) -> None:
    body = user_event("user.created", new_user_id())
    headers = {**signed_headers(body), "svix-timestamp": timestamp}

    expected = "missing_headers" if not timestamp else "invalid_timestamp"
    assert _reason(webhook, body.encode(), headers) == expected


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)], ids=["old", "future"])
def test_timestamp_six_minutes_off_is_stale(webhook: bytes, offset: timedelta) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body, timestamp=datetime.now(UTC) + offset)

    assert _reason(webhook, body.encode(), headers) == "stale_timestamp"


@pytest.mark.parametrize(
    "make_signature",
    [
        lambda good: "garbage",
        lambda good: f"v1,{'A' * 43}=  {good}",
        lambda good: "v1,abcde",
        lambda good: "v1,a,b",
    ],
    ids=["no_comma", "double_space", "bad_base64", "two_commas"],
)
def test_malformed_signature_header_is_rejected_not_raised(webhook: bytes, make_signature: object) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    headers["svix-signature"] = make_signature(headers["svix-signature"])  # type: ignore[operator]

    assert _reason(webhook, body.encode(), headers) == "malformed_signature"


def test_non_utf8_body_signed_over_other_bytes_is_bad_signature(webhook: bytes) -> None:
    body = b'{"type": "user.created", "data": {"id": "\xff\xfe"}}'
    headers = signed_headers(body.decode("latin-1"))  # signs the UTF-8 re-encoding, not these bytes

    assert _reason(webhook, body, headers) == "bad_signature"


def test_any_bytes_signed_as_they_are_verify(webhook: bytes) -> None:
    body = b"\xff\xfe not utf-8 \x00"
    message_id, timestamp = new_message_id(), int(datetime.now(UTC).timestamp())
    digest = hmac.new(webhook, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "svix-id": message_id,
        "svix-timestamp": str(timestamp),
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }

    signed = signature.verify(webhook, body, headers)

    assert signed.message_id == message_id


@pytest.mark.parametrize(
    "secret",
    ["whsec_", "whsec_a", "whsec_!!!!", "", "   ", "sk_test_abcdefghijklmnop", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
)
def test_anything_but_a_whsec_secret_raises_value_error(secret: str) -> None:
    with pytest.raises(ValueError, match="signing secret"):
        signature.signing_key(secret)


def test_unpadded_whsec_secret_is_accepted() -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)

    signed = signature.verify(signature.signing_key(SECRET.rstrip("=")), body.encode(), headers)

    assert signed.message_id == headers["svix-id"]


@pytest.mark.parametrize("emoji", [False, True], ids=["ascii", "emoji"])
def test_verifying_a_1_mib_body_allocates_no_copy_of_it(webhook: bytes, emoji: bool) -> None:
    # Decoding a body with one astral character to str costs 4 bytes per character (4 MiB here).
    filler = "x" * (1024 * 1024 - 200)
    text = json.dumps({"type": "user.created", "data": {"note": ("\U0001f600" if emoji else "") + filler}})
    body = text.encode()
    headers = signed_headers(text)
    headers["svix-signature"] = "v1," + base64.b64encode(b"\0" * 32).decode()  # forged: the attack case

    tracemalloc.start()
    try:
        with pytest.raises(signature.SignatureRejected):
            signature.verify(webhook, body, headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(body) > 1_000_000
    assert peak < 64 * 1024  # bytes: a few small objects, never the body again

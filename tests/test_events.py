"""Clerk JSON turned into typed records: the document's fields, their types, and what is malformed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clerk_events import BASE_MS, deletion_event, envelope, new_user_id, user_data, user_event

from clerk_sync import events, kind, payload, users
from clerk_sync.payload import MalformedEvent
from clerk_sync.users import normalise_email

PAYLOADS = Path(__file__).with_name("payloads")
DOCUMENT_FIELDS = {
    "clerk_id",
    "email",
    "email_verified",
    "email_addresses",
    "phone_number",
    "username",
    "first_name",
    "last_name",
    "image_url",
    "external_id",
    "public_metadata",
    "unsafe_metadata",
    "banned",
    "locked",
    "deprovisioned",
    "created_at",
    "updated_at",
    "last_sign_in_at",
}


def _upsert(body: str | bytes) -> kind.Upsert:
    event = events.parse_event(body.encode() if isinstance(body, str) else body)
    assert isinstance(event, kind.Upsert)
    assert event.kind is users.KIND
    return event


def _payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"next": value}
    return value


def test_clerk_user_created_payload_becomes_the_documented_document() -> None:
    event = _upsert(_payload("user_created"))

    assert event.event_type == "user.created"
    assert event.clerk_id == "user_2abcDEFghiJKLmnoPQRstuVWxyz"
    assert set(event.document) == DOCUMENT_FIELDS
    assert event.document == {
        "clerk_id": "user_2abcDEFghiJKLmnoPQRstuVWxyz",
        "email": "alice@example.com",
        "email_verified": True,
        "email_addresses": ["alice@example.com"],
        "phone_number": None,
        "username": None,
        "first_name": "Alice",
        "last_name": "Anders",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsInJpZCI6I2abcDEFghiJK",
        "external_id": None,
        "public_metadata": {},
        "unsafe_metadata": {},
        "banned": False,
        "locked": False,
        "deprovisioned": False,
        "created_at": datetime(2025, 8, 28, 12, 0, 0, 123_000, tzinfo=UTC),
        "updated_at": datetime(2025, 8, 28, 12, 0, 0, 138_000, tzinfo=UTC),
        "last_sign_in_at": None,
    }
    assert users.email_key(event.document) == "alice@example.com"


def test_milliseconds_become_aware_utc_datetimes_exact_to_the_millisecond() -> None:
    event = _upsert(user_event("user.updated", new_user_id(), updated_at=BASE_MS + 7, last_sign_in_at=1))

    assert event.updated_at == datetime.fromtimestamp((BASE_MS + 7) / 1000, UTC)
    assert event.updated_at.microsecond == 7_000
    assert event.document["last_sign_in_at"] == datetime(1970, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC)
    assert event.updated_at.tzinfo is UTC


def test_primary_email_is_found_by_id_not_position() -> None:
    event = _upsert(_payload("user_updated_email_change"))

    assert event.document["email_addresses"] == ["alice@example.com", "alice.work@example.com"]
    assert event.document["email"] == "alice.work@example.com"
    assert users.email_key(event.document) == "alice.work@example.com"


def test_primary_email_keeps_clerk_spelling_but_key_is_normalised() -> None:
    event = _upsert(
        user_event("user.created", new_user_id(), emails=["other@example.com", " Bob@Example.COM "], primary=1)
    )

    assert event.document["email"] == " Bob@Example.COM "
    assert users.email_key(event.document) == "bob@example.com"


def test_phone_only_user_has_no_email_and_no_key() -> None:
    event = _upsert(_payload("user_created_phone_only"))

    assert event.document["email"] is None
    assert event.document["email_addresses"] == []
    assert event.document["email_verified"] is False
    assert event.document["phone_number"] == "+15555550123"
    assert users.email_key(event.document) is None


def test_username_only_user_is_not_an_error() -> None:
    event = _upsert(user_event("user.created", new_user_id(), emails=[], primary=None, username="ada_l"))

    assert event.document["username"] == "ada_l"
    assert (event.document["email"], event.document["phone_number"], users.email_key(event.document)) == (
        None,
        None,
        None,
    )


def test_primary_id_pointing_nowhere_means_no_email() -> None:
    data = user_data(new_user_id(), primary_email_address_id="idn_gone")

    event = _upsert(json.dumps(envelope("user.updated", data)))

    assert (event.document["email"], users.email_key(event.document)) == (None, None)


@pytest.mark.parametrize(("status", "verified"), [("verified", True), ("unverified", False), (None, False)])
def test_email_verified_follows_the_primary_address_status(status: str | None, verified: bool) -> None:
    data = user_data(new_user_id(), emails=["a@example.com", "b@example.com"], primary=1)
    data["email_addresses"][0]["verification"] = {"status": "verified"}
    data["email_addresses"][1]["verification"] = {"status": status} if status else None

    event = _upsert(json.dumps(envelope("user.updated", data)))

    assert event.document["email_verified"] is verified


def test_private_metadata_never_reaches_the_document() -> None:
    body = user_event("user.created", new_user_id(), private_metadata={"stripe_customer": "cus_private_123"})

    event = _upsert(body)

    assert "private_metadata" not in event.document
    assert "cus_private_123" not in repr(event)


def test_public_and_unsafe_metadata_are_kept_as_maps() -> None:
    public = {"plan": "pro", "seats": 3, "tags": ["a", "b"], "nested": {"x": None, "y": 1.5}}
    body = user_event("user.created", new_user_id(), public_metadata=public, unsafe_metadata={"theme": "dark"})

    event = _upsert(body)

    assert event.document["public_metadata"] == public
    assert event.document["unsafe_metadata"] == {"theme": "dark"}


def test_unicode_names_are_kept_exactly() -> None:
    body = json.dumps(envelope("user.created", user_data(new_user_id(), first_name="Zoë 李", last_name="Ñúñez 🙂")))

    event = _upsert(body)

    assert (event.document["first_name"], event.document["last_name"]) == ("Zoë 李", "Ñúñez 🙂")


def test_escaped_surrogate_pair_is_an_ordinary_character() -> None:
    body = json.dumps(envelope("user.created", user_data(new_user_id(), first_name="smile 🙂")), ensure_ascii=True)
    assert "\\ud83d\\ude42" in body

    assert _upsert(body).document["first_name"] == "smile 🙂"


@pytest.mark.parametrize(
    "metadata",
    [
        {"grid": [[1, 2], [3, 4]]},
        _nested(25),
        {"big": 2**64},
        {"": "empty key"},
        {"__reserved__": 1},
        {"k" * 1_600: 1},
        {"ok": {"__name__": "nested reserved"}},
    ],
    ids=["array_in_array", "too_deep", "beyond_int64", "empty_key", "reserved_key", "long_key", "nested_reserved_key"],
)
def test_metadata_firestore_cannot_hold_is_kept_as_json_text(metadata: dict[str, Any]) -> None:
    body = user_event("user.created", new_user_id(), public_metadata=metadata)

    stored = _upsert(body).document["public_metadata"]

    assert isinstance(stored, str)
    assert json.loads(stored) == metadata


@pytest.mark.parametrize(
    "metadata",
    [_nested(19), {"___": 1, "____": 2, "_x_": 3, "__x": 4}, {"k" * 1_000: 1}],
    ids=["depth_19", "underscore_names_that_are_not_reserved", "long_but_allowed_key"],
)
def test_metadata_firestore_can_hold_stays_a_map(metadata: dict[str, Any]) -> None:
    body = user_event("user.created", new_user_id(), public_metadata=metadata)

    assert _upsert(body).document["public_metadata"] == metadata


def test_deletion_is_ordered_by_the_envelope_timestamp() -> None:
    user_id = new_user_id()

    event = events.parse_event(deletion_event(user_id, timestamp=BASE_MS + 5).encode())

    assert event == kind.Deletion(
        users.KIND, "user.deleted", {"clerk_id": user_id}, datetime.fromtimestamp((BASE_MS + 5) / 1000, UTC)
    )


def test_clerk_user_deleted_payload_parses() -> None:
    event = events.parse_event(_payload("user_deleted"))

    assert isinstance(event, kind.Deletion)
    assert event.kind is users.KIND
    assert event.clerk_id == "user_2abcDEFghiJKLmnoPQRstuVWxyz"


def test_deletion_without_timestamp_still_deletes() -> None:
    body = {"type": "user.deleted", "data": {"id": "user_x", "deleted": True}}

    event = events.parse_event(json.dumps(body).encode())

    assert event == kind.Deletion(users.KIND, "user.deleted", {"clerk_id": "user_x"}, None)


@pytest.mark.parametrize("name", ["email_created", "session_created", "sms_created", "organizationDomain_created"])
def test_other_clerk_events_are_ignored(name: str) -> None:
    event = events.parse_event(_payload(name))

    assert isinstance(event, events.IgnoredEvent)
    assert event.clerk_id is None


def _with(data_changes: dict[str, Any]) -> bytes:
    data = user_data("user_malformed")
    data.update(data_changes)
    return json.dumps(envelope("user.updated", data)).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"data": {"id": "user_x"}}', "missing type"),
        (b'{"type": "", "data": {"id": "user_x"}}', "missing type"),
        (b'{"type": 7, "data": {"id": "user_x"}}', "missing type"),
        (b'{"type": "user.updated"}', "data is not an object"),
        (b'{"type": "user.updated", "data": ["user_x"]}', "data is not an object"),
        (b'{"type": "user.deleted", "data": {"deleted": true}}', "missing data.id"),
        (b'{"type": "user.created", "data": {"id": ""}}', "missing data.id"),
        (b'{"type": "user.created", "data": {"id": 42}}', "missing data.id"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),
        (_with({"id": "users/../x"}), "data.id is not a Clerk user id"),
        (_with({"id": "__user__"}), "data.id is not a Clerk user id"),
        (_with({"updated_at": None}), "missing data.updated_at"),
        (_with({"updated_at": "2025-08-28"}), "updated_at is not epoch milliseconds"),
        (_with({"created_at": 1.5}), "created_at is not epoch milliseconds"),
        (_with({"created_at": True}), "created_at is not epoch milliseconds"),
        (_with({"updated_at": 10**20}), "updated_at is not epoch milliseconds"),
        (_with({"email_addresses": "a@example.com"}), "data.email_addresses is not a list"),
        (_with({"email_addresses": [{"id": "idn_1"}]}), "data.email_addresses has an entry without email_address"),
        (_with({"phone_numbers": [None]}), "data.phone_numbers has an entry without phone_number"),
        (_with({"primary_email_address_id": 1}), "data.primary_email_address_id is not a string"),
        (_with({"first_name": ["Al"]}), "data.first_name is not a string"),
        (_with({"banned": "no"}), "data.banned is not a boolean"),
        (_with({"public_metadata": [1]}), "data.public_metadata is not an object"),
    ],
)
def test_malformed_body_raises_malformed_event_with_a_safe_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as malformed:
        events.parse_event(body)

    assert str(malformed.value) == reason


@pytest.mark.parametrize(
    "changes",
    [{"first_name": "\ud800"}, {"public_metadata": {"k\udfff": 1}}, {"unsafe_metadata": {"a": [[1], "\udc00"]}}],
    ids=["name", "metadata_key", "metadata_held_as_text"],
)
def test_unpaired_surrogate_in_a_stored_field_is_malformed(changes: dict[str, Any]) -> None:
    body = _with(changes)
    assert b"\\ud" in body

    with pytest.raises(MalformedEvent):
        events.parse_event(body)


@pytest.mark.parametrize(
    "changes",
    [{"private_metadata": {"x": "\ud800"}}, {"phone_numbers": [{"id": "idn_2", "phone_number": "\udc00"}]}],
    ids=["private_metadata", "non_primary_phone"],
)
def test_unpaired_surrogate_anywhere_in_user_data_is_malformed(changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent, match="unpaired surrogate"):
        events.parse_event(_with(changes))


def test_unpaired_surrogate_outside_user_data_does_not_matter() -> None:
    body = json.dumps({**envelope("user.created", user_data("user_ok")), "instance_id": "ins_\udfff"}).encode()

    assert isinstance(events.parse_event(body), kind.Upsert)


def test_null_metadata_and_flags_become_empty_and_false() -> None:
    event = _upsert(_with({"public_metadata": None, "banned": None, "locked": True}))

    assert (event.document["public_metadata"], event.document["banned"], event.document["locked"]) == ({}, False, True)


@pytest.mark.parametrize(
    ("address", "key"),
    [(" Alice@Example.COM ", "alice@example.com"), ("a/b@Example.com", "a/b@example.com"), ("   ", None), ("", None)],
)
def test_normalise_email_trims_and_lower_cases(address: str, key: str | None) -> None:
    assert normalise_email(address) == key


@pytest.mark.parametrize(
    "case",
    ["many small numbers", "a long primary email kept twice", "many short keys", "escaped text", "metadata as text"],
)
def test_a_document_is_never_more_than_8_times_its_body_so_small_bodies_skip_the_count(case: str) -> None:
    # payload.check_document_size skips counting when 8 x the body (+ names) fits: the worst shapes
    # a body can take must stay inside that bound.
    user_id = new_user_id()
    if case == "many small numbers":
        body = user_event("user.updated", user_id, public_metadata={"n": [0] * 20_000})
    elif case == "a long primary email kept twice":
        body = user_event("user.updated", user_id, emails=["a" * 100_000 + "@example.com"])
    elif case == "many short keys":
        body = user_event("user.updated", user_id, unsafe_metadata={f"{index:x}": 0 for index in range(10_000)})
    elif case == "escaped text":
        body = json.dumps(json.loads(user_event("user.updated", user_id, first_name="é" * 20_000)), ensure_ascii=True)
    else:
        body = user_event("user.updated", user_id, public_metadata={"deep": [[0]] * 10_000})  # kept as JSON text
    document = _upsert(body).document

    ratio = payload.stored_bytes(document) / len(body.encode())

    assert payload.stored_bytes(document) <= len(body.encode()) * payload.BYTES_PER_BODY_BYTE + payload.NAMES_BYTES
    if case == "many small numbers":
        assert ratio > 2.5  # a real body comes within a factor of about 3 of the bound

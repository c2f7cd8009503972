"""The HTTP adapter through functions-framework's test client: every row of the status table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import emulator
import pytest
from clerk_events import (
    BASE_MS,
    SECRET,
    envelope,
    new_message_id,
    new_user_id,
    signed_headers,
    user_data,
    user_event,
)
from conftest import PATHS, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore
from svix.webhooks import Webhook as SvixWebhook
from werkzeug.test import TestResponse

import main
from clerk_sync import config, events, transaction

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmctLQ=="
KNOWN_OUTCOMES = {
    "applied",
    "duplicate",
    "stale",
    "ignored",
    "conflict",
    "rejected",
    "malformed",
    "method_not_allowed",
    "too_large",
    "unavailable",
    "misconfigured",
    "error",
}

Request = tuple[bytes, dict[str, str]]


def post(client: FlaskClient, body: str | bytes, headers: dict[str, str] | None = None) -> TestResponse:
    """POST a body; signs it now with the test secret unless headers are given."""
    data = body.encode() if isinstance(body, str) else body
    return client.post("/", data=data, headers=headers if headers is not None else signed_headers(data.decode()))


def answer(response: TestResponse) -> tuple[int, str]:
    """Status and outcome, after checking the body is the short, generic JSON every answer has (a
    malformed event's also names its reason)."""
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    outcome = body["outcome"]
    reason = {"reason": body["reason"]} if outcome == "malformed" else {}
    assert body == {"outcome": outcome, **reason}
    assert outcome in KNOWN_OUTCOMES
    assert len(response.get_data()) < (200 if reason else 64)
    return response.status_code, outcome


def _seed(client: FlaskClient) -> str:
    user_id = new_user_id()
    assert answer(post(client, user_event("user.created", user_id, emails=["seed@example.com"]))) == (200, "applied")
    return user_id


# --- 2xx ------------------------------------------------------------------------------------------


def test_signed_user_created_is_applied(client: FlaskClient, db: firestore.Client) -> None:
    user_id = new_user_id()

    response = post(client, user_event("user.created", user_id))

    assert answer(response) == (200, "applied")
    stored = db.collection(PATHS.users).document(user_id).get(timeout=10).to_dict()
    assert stored is not None
    assert stored["email"] == "alice@example.com"


def test_duplicate_delivery_is_200_duplicate_and_writes_once(client: FlaskClient, db: firestore.Client) -> None:
    body = user_event("user.created", new_user_id())
    message_id = new_message_id()
    post(client, body, signed_headers(body, message_id=message_id))
    before = snapshot_all(db)

    response = post(client, body, signed_headers(body, message_id=message_id))

    assert answer(response) == (200, "duplicate")
    assert snapshot_all(db) == before


def test_stale_update_is_200_stale(client: FlaskClient) -> None:
    user_id = new_user_id()
    post(client, user_event("user.updated", user_id, updated_at=BASE_MS + 10))

    response = post(client, user_event("user.updated", user_id, updated_at=BASE_MS))

    assert answer(response) == (200, "stale")


@pytest.mark.parametrize(
    "event_type",
    ["email.created", "session.created", "organizationDomain.created", "waitlistEntry.created", "user.banned"],
)
def test_other_event_types_are_200_ignored_and_write_nothing(
    client: FlaskClient, db: firestore.Client, event_type: str
) -> None:
    body = json.dumps(envelope(event_type, {"id": "x_1", "object": "thing", "body": "OTP 123456"}))

    response = post(client, body)

    assert answer(response) == (200, "ignored")
    assert snapshot_all(db) == {}


def test_svix_signed_request_with_several_signatures_is_applied(client: FlaskClient) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    when = datetime.fromtimestamp(int(headers["svix-timestamp"]), UTC)
    rotated = SvixWebhook(OTHER_SECRET).sign(headers["svix-id"], when, body)
    headers["svix-signature"] = f"{rotated} {headers['svix-signature']}"

    assert answer(post(client, body, headers)) == (200, "applied")


def test_unbranded_webhook_headers_are_applied(client: FlaskClient) -> None:
    body = user_event("user.created", new_user_id())

    assert answer(post(client, body, signed_headers(body, prefix="webhook"))) == (200, "applied")


def test_header_names_are_case_insensitive(client: FlaskClient) -> None:
    body = user_event("user.created", new_user_id())
    headers = {name.upper(): value for name, value in signed_headers(body).items()}

    assert answer(post(client, body, headers)) == (200, "applied")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_raw_bytes_are_verified_whatever_the_content_type(client: FlaskClient, content_type: str | None) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body)
    del headers["content-type"]
    if content_type:
        headers["Content-Type"] = content_type

    assert answer(post(client, body, headers)) == (200, "applied")


def test_webhook_secret_is_the_fallback_variable(client: FlaskClient) -> None:
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = ""
    os.environ["WEBHOOK_SECRET"] = OTHER_SECRET
    config.reset()
    body = user_event("user.created", new_user_id())

    with_fallback = post(client, body, signed_headers(body, secret=OTHER_SECRET))
    with_test_secret = post(client, body, signed_headers(body, secret=SECRET))

    assert answer(with_fallback) == (200, "applied")
    assert answer(with_test_secret) == (401, "rejected")


# --- 4xx: each leaves the database exactly as it was ----------------------------------------------


def _signed(body: str | bytes) -> Request:
    data = body.encode() if isinstance(body, str) else body
    return data, signed_headers(data.decode())


def _without(header: str) -> Request:
    body, headers = _signed(user_event("user.created", new_user_id()))
    del headers[header]
    return body, headers


def _with_header(header: str, make: Callable[[str], str]) -> Request:
    body, headers = _signed(user_event("user.created", new_user_id()))
    headers[header] = make(headers[header])
    return body, headers


def _signed_at(offset: timedelta) -> Request:
    body = user_event("user.created", new_user_id())
    return body.encode(), signed_headers(body, timestamp=datetime.now(UTC) + offset)


def _reserialised() -> Request:
    body = user_event("user.created", new_user_id())
    return json.dumps(json.loads(body), indent=2).encode(), signed_headers(body)


def _other_secret() -> Request:
    body = user_event("user.created", new_user_id())
    return body.encode(), signed_headers(body, secret=OTHER_SECRET)


def _non_utf8() -> Request:
    body = b'{"type": "user.created", "data": {"id": "user_\xff"}}'
    return body, signed_headers(body.decode("latin-1"))


def _user_with(**changes: object) -> Request:
    data = user_data(new_user_id())
    data.update(changes)
    return _signed(json.dumps(envelope("user.updated", data)))


BAD_REQUESTS: dict[str, tuple[Callable[[], Request], int]] = {
    "missing_id": (lambda: _without("svix-id"), 400),
    "missing_timestamp": (lambda: _without("svix-timestamp"), 400),
    "missing_signature": (lambda: _without("svix-signature"), 400),
    "non_numeric_timestamp": (lambda: _with_header("svix-timestamp", lambda _: "yesterday"), 400),
    "timestamp_6_min_old": (lambda: _signed_at(timedelta(minutes=-6)), 400),
    "timestamp_6_min_ahead": (lambda: _signed_at(timedelta(minutes=6)), 400),
    "signature_without_comma": (lambda: _with_header("svix-signature", lambda _: "garbage"), 400),
    "double_space_in_list": (lambda: _with_header("svix-signature", lambda good: f"v1,{'A' * 43}=  {good}"), 400),
    "bad_base64": (lambda: _with_header("svix-signature", lambda _: "v1,abcde"), 400),
    "non_utf8_body_signed_as_utf8": (_non_utf8, 401),
    "wrong_signature": (_other_secret, 401),
    "reserialised_body": (_reserialised, 401),
    "malformed_json": (lambda: _signed('{"type": "user.created", "data": {'), 400),
    "json_not_an_object": (lambda: _signed("[]"), 400),
    "missing_type": (lambda: _signed(json.dumps({"data": user_data(new_user_id())})), 400),
    "user_event_without_data_id": (lambda: _signed(json.dumps(envelope("user.created", {"object": "user"}))), 400),
    "deletion_without_data_id": (lambda: _signed(json.dumps(envelope("user.deleted", {"deleted": True}))), 400),
    "data_not_an_object": (lambda: _signed(json.dumps({"type": "user.updated", "data": "user_1"})), 400),
    "data_id_not_a_clerk_id": (lambda: _user_with(id="users/x"), 400),
    "updated_at_not_ms": (lambda: _user_with(updated_at="yesterday"), 400),
    "unpaired_surrogate_in_name": (lambda: _user_with(first_name="\ud800"), 400),
}


@pytest.mark.parametrize(("make", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_refused_and_changes_nothing(
    client: FlaskClient, db: firestore.Client, make: Callable[[], Request], status: int
) -> None:
    _seed(client)
    before = snapshot_all(db)
    body, headers = make()

    response = post(client, body, headers)

    assert answer(response)[0] == status
    assert snapshot_all(db) == before


def test_malformed_event_answer_names_the_field_never_its_value(
    client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    body, headers = _user_with(first_name={"nested": "grace@example.com"}, last_name="Hopper")
    capsys.readouterr()

    response = post(client, body, headers)

    logged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert response.status_code == 400
    assert response.json == {"outcome": "malformed", "reason": "data.first_name is not a string"}
    assert logged["reason"] == response.json["reason"]
    assert b"grace@example.com" not in response.get_data()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow_post(client: FlaskClient, db: firestore.Client, method: str) -> None:
    _seed(client)
    before = snapshot_all(db)
    body = user_event("user.created", new_user_id())

    response = client.open("/", method=method, data=body, headers=signed_headers(body))

    assert answer(response) == (405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert snapshot_all(db) == before


def test_body_over_1_mib_is_413(client: FlaskClient, db: firestore.Client) -> None:
    _seed(client)
    before = snapshot_all(db)
    body = user_event("user.created", new_user_id(), public_metadata={"pad": "x" * main.MAX_BODY_BYTES})

    response = post(client, body)

    assert answer(response) == (413, "too_large")
    assert snapshot_all(db) == before


def test_email_owned_by_another_user_is_409_and_changes_nothing(client: FlaskClient, db: firestore.Client) -> None:
    _seed(client)
    before = snapshot_all(db)
    message_id = new_message_id()
    body = user_event("user.created", new_user_id(), emails=["SEED@example.com"])

    response = post(client, body, signed_headers(body, message_id=message_id))

    assert answer(response) == (409, "conflict")
    assert snapshot_all(db) == before


def test_409_does_not_block_the_retry_once_the_old_owner_lets_go(client: FlaskClient, db: firestore.Client) -> None:
    owner = _seed(client)
    message_id = new_message_id()
    taker = user_event("user.created", new_user_id(), emails=["seed@example.com"], updated_at=BASE_MS + 20)
    release = user_event("user.updated", owner, emails=["moved@example.com"], updated_at=BASE_MS + 10)

    early = post(client, taker, signed_headers(taker, message_id=message_id))
    released = post(client, release)
    retried = post(client, taker, signed_headers(taker, message_id=message_id))

    assert [answer(early), answer(released), answer(retried)] == [(409, "conflict"), (200, "applied"), (200, "applied")]


# --- 5xx ------------------------------------------------------------------------------------------


def test_unreachable_firestore_is_503_and_nothing_is_written(
    client: FlaskClient, db: firestore.Client, emulator_host: str
) -> None:
    _seed(client)
    before = snapshot_all(db)
    body = user_event("user.created", new_user_id())
    message_id = new_message_id()
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{emulator.free_port()}"
    transaction.reset_client()

    response = post(client, body, signed_headers(body, message_id=message_id))
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
    transaction.reset_client()
    after = snapshot_all(db)
    retried = post(client, body, signed_headers(body, message_id=message_id))

    assert answer(response) == (503, "unavailable")
    assert after == before
    assert answer(retried) == (200, "applied")


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_without_a_secret_every_request_is_500_and_nothing_is_processed(
    client: FlaskClient, db: firestore.Client, method: str
) -> None:
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = ""
    os.environ["WEBHOOK_SECRET"] = ""
    config.reset()
    body = user_event("user.created", new_user_id())

    response = client.open("/", method=method, data=body, headers=signed_headers(body))

    assert answer(response) == (500, "misconfigured")
    assert snapshot_all(db) == {}


@pytest.mark.parametrize("secret", ["whsec_", "whsec_a", "whsec_!!!!"])
def test_invalid_secret_value_is_500_misconfigured(client: FlaskClient, db: firestore.Client, secret: str) -> None:
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = secret
    config.reset()
    body = user_event("user.created", new_user_id())

    response = post(client, body)

    assert answer(response) == (500, "misconfigured")
    assert snapshot_all(db) == {}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FIRESTORE_DEADLINE_SECONDS", "not-a-number"),
        ("FIRESTORE_DEADLINE_SECONDS", "15"),
        ("FIRESTORE_DEADLINE_SECONDS", "nan"),
        ("FIRESTORE_DEADLINE_SECONDS", "inf"),
        ("FIRESTORE_DEADLINE_SECONDS", "0"),
        ("EVENT_LOG_TTL_DAYS", "0"),
        ("EVENT_LOG_TTL_DAYS", "-3"),
        ("EVENT_LOG_TTL_DAYS", "1"),
        ("EVENT_LOG_TTL_DAYS", "thirty"),
        ("USERS_COLLECTION", "users/x"),
        ("USERS_COLLECTION", "__users__"),
        ("ORGANIZATIONS_COLLECTION", "users"),
        ("ON_USER_DELETED", "archive"),
        ("FIRESTORE_DATABASE", "Bad Name"),
        ("CLERK_WEBHOOK_SIGNING_SECRET", "sk_test_abcdefghijklmnopqrstuvwxyz"),
    ],
)
def test_unusable_setting_is_500_misconfigured_naming_the_variable(
    client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    os.environ[variable] = value
    config.reset()
    body = user_event("user.created", new_user_id())
    capsys.readouterr()

    response = post(client, body)

    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer(response) == (500, "misconfigured")
    assert value.encode() not in response.get_data()
    assert line["reason"] == variable
    assert line["message"].startswith(variable)
    assert snapshot_all(db) == {}


def test_unexpected_error_is_500_generic_with_a_traceback_on_stderr_and_no_payload(
    client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = "alice@example.com"

    def bug(*_args: object, **_kwargs: object) -> None:
        raise KeyError(address)  # a bug whose message quotes the payload

    monkeypatch.setattr(events, "apply_event", bug)
    body = user_event("user.created", new_user_id(), emails=[address])
    message_id = new_message_id()
    capsys.readouterr()

    response = post(client, body, signed_headers(body, message_id=message_id))

    captured = capsys.readouterr()
    line = json.loads(captured.out.strip().splitlines()[-1])
    report = json.loads(captured.err.strip().splitlines()[-1])
    assert answer(response) == (500, "error")
    assert response.get_data() == b'{"outcome": "error"}\n'
    assert (line["severity"], line["svix_id"], line["outcome"]) == ("ERROR", message_id, "error")
    assert report["severity"] == "ERROR"
    assert report["svix_id"] == message_id
    assert report["message"].startswith("Traceback (most recent call last):")
    assert "in _webhook" in report["message"]
    assert report["message"].endswith("builtins.KeyError")
    assert "alice" not in captured.out + captured.err

"""One structured JSON line per request, with trace correlation and no personal data or secrets."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import emulator
import pytest
from clerk_events import SECRET, deletion_event, envelope, new_message_id, new_user_id, signed_headers, user_event
from conftest import PROJECT, Server, start_server, stop_server
from flask.testing import FlaskClient
from google.cloud import firestore
from loopback import send

from clerk_sync import config, logs, transaction

REQUIRED_FIELDS = {"severity", "message", "svix_id", "event_type", "clerk_id", "outcome", "status", "latency_ms"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_FIELD = "logging.googleapis.com/trace"
EMAIL_PATTERN = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
# Personal data and secrets the run below sends; none may appear in any log line.
EMAILS = ["Private.Person@Example.com", "second.person@example.org", "taken@example.net"]
PHONE = "+15555550199"
NAME = "Zelda-Uniquename"
METADATA_VALUE = "meta-value-9b1f"
PRIVATE_VALUE = "cus_private_77aa"

# Posts a body with the given headers (signed now when None) and returns the status.
Post = Callable[[str, dict[str, str] | None], int]


def _lines(text: str) -> list[dict[str, Any]]:
    """The function's JSON lines (a server's log also holds gunicorn's plain lines)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _sensitive_body(user_id: str, email: str, *, updated_at_offset: int = 0) -> str:
    return user_event(
        "user.created",
        user_id,
        emails=[email],
        phones=[PHONE],
        first_name=NAME,
        public_metadata={"plan": METADATA_VALUE},
        unsafe_metadata={"note": METADATA_VALUE},
        private_metadata={"stripe": PRIVATE_VALUE},
        updated_at=1_756_382_400_000 + updated_at_offset,
    )


def _assert_nothing_sensitive(text: str, bodies: list[str]) -> None:
    for needle in [*EMAILS, *(email.lower() for email in EMAILS), PHONE, NAME, METADATA_VALUE, PRIVATE_VALUE]:
        assert needle not in text
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text
    assert not EMAIL_PATTERN.search(text)
    for body in bodies:
        assert body not in text
        assert body[:40] not in text


def _assert_one_line_each(lines: list[dict[str, Any]], statuses: list[int]) -> None:
    assert [line["status"] for line in lines] == statuses
    for line in lines:
        assert set(line) >= REQUIRED_FIELDS
        assert line["severity"] in {"INFO", "WARNING", "ERROR"}
        assert isinstance(line["latency_ms"], int | float)
        assert line["latency_ms"] >= 0
        assert isinstance(line["message"], str)
        assert line["message"]


def _mixed_run(post: Post) -> tuple[list[int], list[str], str]:
    """Requests covering every outcome, errors included; returns the statuses, bodies and svix id."""
    user_id = new_user_id()
    created = _sensitive_body(user_id, EMAILS[0])
    message_id = new_message_id()
    conflicting = _sensitive_body(new_user_id(), EMAILS[0])
    bodies = [created, conflicting]
    statuses = [
        post(created, signed_headers(created, message_id=message_id)),
        post(created, signed_headers(created, message_id=message_id)),
        post(conflicting, signed_headers(conflicting)),
        post(created, signed_headers(created, secret="whsec_" + "QUJD" * 8)),
        post(created, {**signed_headers(created), "svix-signature": "garbage"}),
        post('{"type": "user.created", "data": {"email": "taken@example.net"}}', None),
        post(json.dumps(envelope("email.created", {"to_email_address": EMAILS[2], "body": "code 123"})), None),
        post(deletion_event(user_id), None),
    ]
    return statuses, bodies, message_id


# --- through the test client ----------------------------------------------------------------------


@pytest.fixture
def captured_post(client: FlaskClient) -> Post:
    def post(body: str, headers: dict[str, str] | None) -> int:
        return client.post("/", data=body.encode(), headers=headers or signed_headers(body)).status_code

    return post


def test_each_request_logs_one_complete_json_line(captured_post: Post, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()

    statuses, _, message_id = _mixed_run(captured_post)

    lines = _lines(capsys.readouterr().out)
    assert statuses == [200, 200, 409, 401, 400, 400, 200, 200]
    _assert_one_line_each(lines, statuses)
    assert [line["outcome"] for line in lines] == [
        "applied",
        "duplicate",
        "conflict",
        "rejected",
        "rejected",
        "malformed",
        "ignored",
        "applied",
    ]
    assert [line["severity"] for line in lines] == ["INFO", "INFO", "WARNING", "WARNING", "WARNING", "WARNING"] + [
        "INFO"
    ] * 2
    first = lines[0]
    assert (first["svix_id"], first["event_type"]) == (message_id, "user.created")
    assert first["clerk_id"].startswith("user_test")
    assert lines[3]["svix_id"] is None  # an unverified id is not trusted, not even in logs
    assert lines[6]["event_type"] == "email.created"


def test_no_log_line_holds_emails_phones_metadata_bodies_or_the_secret(
    captured_post: Post, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    _, bodies, _ = _mixed_run(captured_post)
    os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{emulator.free_port()}"
    transaction.reset_client()
    unavailable = captured_post(_sensitive_body(new_user_id(), EMAILS[1]), None)
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = "whsec_"
    config.reset()
    misconfigured = captured_post(_sensitive_body(new_user_id(), EMAILS[1]), None)

    captured = capsys.readouterr()

    assert (unavailable, misconfigured) == (503, 500)
    _assert_nothing_sensitive(captured.out + captured.err, bodies)
    assert [line["severity"] for line in _lines(captured.out)][-2:] == ["ERROR", "ERROR"]


@pytest.mark.parametrize(
    ("headers", "trace"),
    [
        ({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}, TRACE_ID),
        ({"X-Cloud-Trace-Context": f"{TRACE_ID.upper()}/12345;o=1"}, TRACE_ID),
        ({"X-Cloud-Trace-Context": TRACE_ID}, TRACE_ID),
        ({"traceparent": "garbage", "X-Cloud-Trace-Context": f"{TRACE_ID}/1"}, TRACE_ID),
        ({"traceparent": "00-short-00f067aa0ba902b7-01"}, None),
        ({}, None),
    ],
    ids=["traceparent", "cloud_trace_context", "cloud_trace_bare", "fallback", "invalid", "absent"],
)
def test_trace_header_becomes_the_cloud_logging_trace_field(
    captured_post: Post, capsys: pytest.CaptureFixture[str], headers: dict[str, str], trace: str | None
) -> None:
    body = user_event("user.created", new_user_id())
    capsys.readouterr()

    captured_post(body, {**signed_headers(body), **headers})

    [line] = _lines(capsys.readouterr().out)
    expected = f"projects/{PROJECT}/traces/{trace}" if trace else None
    assert line.get(TRACE_FIELD) == expected


def test_trace_field_is_left_out_without_a_project() -> None:
    assert logs.trace_field({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}, None) == {}


# --- through the real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def log_server(emulator_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, so its log holds only this module's requests."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host}
    server = start_server(tmp_path_factory.mktemp("logs"), environment)
    try:
        yield server
    finally:
        stop_server(server)


def test_server_logs_one_clean_line_per_request_with_trace(log_server: Server, db: firestore.Client) -> None:
    lines_before = len(_lines(log_server.log()))

    def post(body: str, headers: dict[str, str] | None) -> int:
        all_headers = {**(headers or signed_headers(body)), "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        return send(log_server.url, body.encode(), all_headers).status

    statuses, bodies, _ = _mixed_run(post)
    not_post = send(log_server.url, method="GET").status

    text = log_server.log()
    lines = _lines(text)[lines_before:]
    _assert_one_line_each(lines, [*statuses, not_post])
    assert {line[TRACE_FIELD] for line in lines[:-1]} == {f"projects/{PROJECT}/traces/{TRACE_ID}"}
    _assert_nothing_sensitive(text, bodies)

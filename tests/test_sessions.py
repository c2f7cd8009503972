"""Session events through the real webhook adapter and the Firestore emulator: an ended session is recorded
once, whatever order and however often its events arrive; the rest of the family is acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clerk_events import envelope, new_user_id, session_event, signed_headers
from clerk_sessions import new_session_id
from conftest import PATHS, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import events, sessions

PAYLOADS = Path(__file__).with_name("payloads")


def post(client: FlaskClient, body: str, message_id: str | None = None) -> tuple[int, str]:
    """Deliver one signed event; its status and outcome."""
    response = client.post("/", data=body, headers=signed_headers(body, message_id=message_id))
    return response.status_code, response.get_json()["outcome"]


def ended(db: firestore.Client, session_id: str) -> dict[str, object] | None:
    """The ended-session record, if any."""
    snapshot = db.collection(PATHS.ended_sessions).document(session_id).get(timeout=10)
    return snapshot.to_dict() if snapshot.exists else None


@pytest.mark.parametrize("event_type", sessions.ENDING_TYPES)
def test_an_ending_session_event_records_the_session_as_ended(
    client: FlaskClient, db: firestore.Client, event_type: str
) -> None:
    session_id, user_id = new_session_id(), new_user_id()

    assert post(client, session_event(event_type, session_id, user_id), "msg_end_1") == (200, "applied")

    record = ended(db, session_id)
    assert record is not None
    assert {key: record[key] for key in ("session_id", "user_id", "ended_by", "recorded_by")} == {
        "session_id": session_id,
        "user_id": user_id,
        "ended_by": event_type,
        "recorded_by": "msg_end_1",
    }
    assert record["status"] == event_type.removeprefix("session.")


def test_the_first_end_is_kept_and_later_ends_or_retries_change_nothing(
    client: FlaskClient, db: firestore.Client
) -> None:
    session_id, user_id = new_session_id(), new_user_id()
    revoked = session_event("session.revoked", session_id, user_id)

    first = post(client, revoked, "msg_revoked")
    retry = post(client, revoked, "msg_revoked")
    removed_later = post(client, session_event("session.removed", session_id, user_id), "msg_removed")

    assert (first, retry, removed_later) == ((200, "applied"), (200, "duplicate"), (200, "stale"))
    record = ended(db, session_id)
    assert record is not None
    assert (record["ended_by"], record["recorded_by"]) == ("session.revoked", "msg_revoked")


def test_an_end_arriving_before_its_session_was_ever_seen_is_recorded(
    client: FlaskClient, db: firestore.Client
) -> None:
    # The webhook never stores created sessions, so an end needs nothing before it.
    session_id = new_session_id()

    assert post(client, session_event("session.ended", session_id, new_user_id())) == (200, "applied")
    assert ended(db, session_id) is not None


@pytest.mark.parametrize("event_type", ["session.created", "session.pending"])
def test_a_starting_session_is_acknowledged_and_nothing_is_written(
    client: FlaskClient, db: firestore.Client, event_type: str
) -> None:
    assert post(client, session_event(event_type, new_session_id(), new_user_id())) == (200, "ignored")
    assert snapshot_all(db) == {}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"id": "sess_1"}, "missing data.user_id"),
        ({"user_id": "user_1"}, "missing data.id"),
        ({"id": "user_1", "user_id": "user_1"}, "data.id is not a Clerk session id"),
        ({"id": "sess_1", "user_id": "org_1"}, "data.user_id is not a Clerk user id"),
        ({"id": "sess/../x", "user_id": "user_1"}, "data.id is not a Clerk session id"),
    ],
)
def test_a_malformed_session_end_is_400_and_writes_nothing(
    client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str], data: dict[str, str], reason: str
) -> None:
    body = json.dumps(envelope("session.revoked", {"object": "session", **data}))

    response = client.post("/", data=body, headers=signed_headers(body))

    assert (response.status_code, response.get_json()["outcome"]) == (400, "malformed")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["reason"] for line in lines] == [reason]
    assert snapshot_all(db) == {}


@pytest.mark.parametrize("name", ["session_ended", "session_revoked"])
def test_clerks_own_session_payloads_parse(name: str) -> None:
    body = (PAYLOADS / f"{name}.json").read_bytes()
    data = json.loads(body)["data"]

    change = events.parse_event(body)

    assert isinstance(change, sessions.SessionEnd)
    assert (change.session_id, change.user_id, change.status) == (data["id"], data["user_id"], data["status"])
    assert change.ended_at is not None
    assert change.ended_at.timestamp() * 1000 == data["updated_at"]


def test_an_odd_status_or_time_never_fails_the_end() -> None:
    body = json.dumps(
        envelope(
            "session.revoked",
            {"object": "session", "id": "sess_1", "user_id": "user_1", "status": 7, "updated_at": "soon"},
        )
    )

    change = events.parse_event(body.encode())

    assert isinstance(change, sessions.SessionEnd)
    assert (change.status, change.ended_at) == (None, None)

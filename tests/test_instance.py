"""The webhook records the Clerk instance its data belongs to and refuses events of another one.

Through the real adapter (functions-framework's test client) into the emulator: the first event
that names its instance records it; an event of another instance answers 403 and writes nothing;
an envelope without `instance_id` is accepted as before; and the check costs one read per process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from clerk_events import envelope, new_user_id, signed_headers, user_data
from conftest import PATHS, PROJECT, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore
from rpc_count import CallCounter, counting_client

from clerk_sync import event_log, instance, transaction

RECORD = f"{PATHS.state}/{instance.INSTANCE_DOCUMENT}"


def body_of(user_id: str, instance_id: Any = "ins_test", **fields: Any) -> str:
    """A `user.created` body; `instance_id=None` leaves the field out, as hand-made events do."""
    event = envelope("user.created", user_data(user_id, emails=[f"{user_id}@example.com"], **fields))
    if instance_id is None:
        del event["instance_id"]
    else:
        event["instance_id"] = instance_id
    return json.dumps(event)


def post(client: FlaskClient, body: str) -> tuple[int, str]:
    response = client.post("/", data=body, headers=signed_headers(body))
    return response.status_code, response.json["outcome"]  # type: ignore[index]


def last_line(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    return lines[-1]


def stored(db: firestore.Client, user_id: str) -> bool:
    return bool(db.collection(PATHS.users).document(user_id).get(timeout=10).exists)


def test_the_first_event_records_its_instance(client: FlaskClient, db: firestore.Client) -> None:
    user_id = new_user_id()

    assert post(client, body_of(user_id)) == (200, "applied")

    record = db.document(RECORD).get(timeout=10).to_dict() or {}
    assert (record["instance_id"], record["pinned_by"], record["environment_type"]) == ("ins_test", "webhook", None)
    assert stored(db, user_id)


def test_an_event_of_another_instance_is_refused_with_403_and_writes_nothing(
    client: FlaskClient, db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    post(client, body_of(new_user_id()))
    before = snapshot_all(db)
    intruder = new_user_id()
    capsys.readouterr()

    answer = post(client, body_of(intruder, "ins_otherinstance"))

    line = last_line(capsys)
    assert answer == (403, "other_instance")
    assert snapshot_all(db) == before
    assert (line["reason"], line["instance_id"], line["pinned"]) == ("other_instance", "ins_otherinstance", "ins_test")
    assert line["severity"] == "WARNING"
    assert "ins_otherinstance" in line["message"]


def test_a_new_process_reads_the_record_and_refuses_another_instance(client: FlaskClient, db: firestore.Client) -> None:
    post(client, body_of(new_user_id()))
    instance.forget()  # as a new instance of the function starts knowing nothing
    intruder = new_user_id()

    assert post(client, body_of(intruder, "ins_otherinstance")) == (403, "other_instance")
    assert not stored(db, intruder)
    assert post(client, body_of(new_user_id())) == (200, "applied")


def test_an_event_without_instance_id_is_accepted_as_before(client: FlaskClient, db: firestore.Client) -> None:
    post(client, body_of(new_user_id()))
    hand_made = new_user_id()

    assert post(client, body_of(hand_made, None)) == (200, "applied")
    assert stored(db, hand_made)


def test_events_without_instance_id_record_nothing(client: FlaskClient, db: firestore.Client) -> None:
    assert post(client, body_of(new_user_id(), None)) == (200, "applied")

    assert not db.document(RECORD).get(timeout=10).exists
    assert post(client, body_of(new_user_id(), "ins_later")) == (200, "applied")  # the first real one records


@pytest.mark.parametrize("value", ["ins_\udfff", "not-an-instance", 42, {"id": "ins_x"}], ids=str)
def test_an_unusable_instance_id_is_malformed_and_writes_nothing(
    client: FlaskClient, db: firestore.Client, value: Any
) -> None:
    assert post(client, body_of(new_user_id(), value)) == (400, "malformed")
    assert snapshot_all(db) == {}


def test_a_record_without_a_usable_instance_is_replaced_by_the_first_event(
    client: FlaskClient, db: firestore.Client
) -> None:
    db.document(RECORD).set({"instance_id": "", "note": "edited by hand"})

    assert post(client, body_of(new_user_id())) == (200, "applied")
    assert (db.document(RECORD).get(timeout=10).to_dict() or {})["instance_id"] == "ins_test"


def test_two_first_writers_agree_on_one_instance(db: firestore.Client) -> None:
    first = instance.pin(db, PATHS, instance.Pin("ins_first"), pinned_by="webhook", timeout=10)
    second = instance.pin(db, PATHS, instance.Pin("ins_second", "production"), pinned_by="reconcile", timeout=10)

    assert first == second == instance.Pin("ins_first")


def test_the_check_costs_one_read_per_process_and_nothing_after(client: FlaskClient, db: firestore.Client) -> None:
    counter = CallCounter()
    transaction._client = counting_client(PROJECT, counter)  # the function's shared client, counted

    post(client, body_of(new_user_id(), None))  # the process's other first-event work (the event log's) done
    counter.take()
    post(client, body_of(new_user_id()))
    first = counter.take()
    post(client, body_of(new_user_id()))
    second = counter.take()
    instance.forget()
    post(client, body_of(new_user_id()))
    new_process = counter.take()

    # The record read, then created; the event's own transaction: BatchGetDocuments + Commit.
    assert (first["BatchGetDocuments"], first["Commit"]) == (2, 2)
    assert (second["BatchGetDocuments"], second["Commit"]) == (1, 1)
    assert (new_process["BatchGetDocuments"], new_process["Commit"]) == (2, 1)  # the record read, no create


def test_a_cold_process_reads_the_record_and_the_event_logs_state_in_one_round_trip(
    client: FlaskClient, db: firestore.Client
) -> None:
    counter = CallCounter()
    transaction._client = counting_client(PROJECT, counter)
    post(client, body_of(new_user_id()))  # records the instance and starts the event log's state
    instance.forget()
    event_log.reset()  # a new process: it knows neither
    counter.take()

    status = post(client, body_of(new_user_id()))
    cold = counter.take()
    refused = post(client, body_of(new_user_id(), "ins_other"))

    assert status == (200, "applied")
    # One read of both process-wide documents, then the event's own BatchGetDocuments + Commit.
    assert (cold["BatchGetDocuments"], cold["RunQuery"], cold["Commit"]) == (2, 0, 1)
    assert refused == (403, "other_instance")  # the record read with the state is enforced

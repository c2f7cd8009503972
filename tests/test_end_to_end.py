"""The real functions-framework server process, posted to over loopback, against the emulator."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clerk_events import (
    BASE_MS,
    deletion_event,
    envelope,
    new_message_id,
    new_user_id,
    signed_headers,
    user_data,
    user_event,
)
from conftest import Server, snapshot_all, start_server, stop_server
from google.cloud import firestore
from loopback import deliver, send, send_streamed

import main

THREAD_COUNT = 8
JOIN_TIMEOUT_SECONDS = 120.0
# Far beyond what the socket buffers between client and server can hold (a few MiB).
HUGE_BODY_BYTES = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def running(emulator_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: starting gunicorn per test would cost a second each."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "THREADS": str(THREAD_COUNT)}
    server = start_server(tmp_path_factory.mktemp("end_to_end"), environment)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def url(running: Server, db: firestore.Client) -> str:
    """The server's URL, with a wiped database behind it."""
    return running.url


def _user(db: firestore.Client, user_id: str) -> dict[str, Any] | None:
    return db.collection("users").document(user_id).get(timeout=10).to_dict()


def _sized_body(size: int) -> str:
    """A signed-able user.created body of exactly `size` bytes (padding in private_metadata)."""
    user_id = new_user_id()
    data = user_data(user_id, private_metadata={"pad": ""})
    bare = len(json.dumps(envelope("user.created", data)).encode())
    data["private_metadata"]["pad"] = "x" * (size - bare)
    body = json.dumps(envelope("user.created", data))
    assert len(body.encode()) == size
    return body


def _chunks(payload: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


def test_create_update_delete_over_loopback(url: str, db: firestore.Client) -> None:
    user_id = new_user_id()
    created = user_event("user.created", user_id, emails=["carol@example.com"], first_name="Carol")
    updated = user_event(
        "user.updated", user_id, emails=["carol@example.com"], first_name="Caz", updated_at=BASE_MS + 1
    )
    deleted = deletion_event(user_id)

    replies = [send(url, body.encode(), signed_headers(body)) for body in (created, updated)]
    stored = _user(db, user_id)
    deletion = send(url, deleted.encode(), signed_headers(deleted))

    assert [(reply.status, reply.json()) for reply in replies] == [(200, {"outcome": "applied"})] * 2
    assert stored is not None
    assert stored["first_name"] == "Caz"
    assert (deletion.status, deletion.json()) == (200, {"outcome": "applied"})
    assert _user(db, user_id) is None
    assert db.collection("user_tombstones").document(user_id).get(timeout=10).exists


def test_bad_signature_over_loopback_is_401_and_writes_nothing(url: str, db: firestore.Client) -> None:
    body = user_event("user.created", new_user_id())
    headers = signed_headers(body, secret="whsec_" + "QUJD" * 8)

    reply = send(url, body.encode(), headers)

    assert (reply.status, reply.json()) == (401, {"outcome": "rejected"})
    assert snapshot_all(db) == {}


def test_get_over_loopback_is_405_with_allow_post(url: str) -> None:
    reply = send(url, method="GET")

    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"


def test_body_over_limit_with_content_length_is_413(url: str, db: firestore.Client) -> None:
    body = _sized_body(main.MAX_BODY_BYTES + 1)

    reply = send(url, body.encode(), signed_headers(body))

    assert (reply.status, reply.json()) == (413, {"outcome": "too_large"})
    assert snapshot_all(db) == {}


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_huge_body_is_413_before_it_is_all_read(url: str, db: firestore.Client, chunked: bool) -> None:
    payload = b"x" * HUGE_BODY_BYTES

    reply, sent = send_streamed(
        url,
        _chunks(payload),
        signed_headers(payload.decode()),
        content_length=None if chunked else len(payload),
    )

    assert (reply.status, reply.json()) == (413, {"outcome": "too_large"})
    assert sent < len(payload)  # the server stopped reading; the sender hit a closed connection
    assert snapshot_all(db) == {}


def test_chunked_body_just_over_limit_is_413(url: str, db: firestore.Client) -> None:
    body = _sized_body(main.MAX_BODY_BYTES + 1)

    reply, _ = send_streamed(url, _chunks(body.encode()), signed_headers(body))

    assert (reply.status, reply.json()) == (413, {"outcome": "too_large"})
    assert snapshot_all(db) == {}


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_body_of_exactly_the_limit_is_read_whole_and_applied(url: str, db: firestore.Client, chunked: bool) -> None:
    body = _sized_body(main.MAX_BODY_BYTES)
    payload = body.encode()

    if chunked:
        reply, _ = send_streamed(url, _chunks(payload), signed_headers(body))
    else:
        reply = send(url, payload, signed_headers(body))

    assert (reply.status, reply.json()) == (200, {"outcome": "applied"})
    assert len(snapshot_all(db)) == 3  # user, claim, event record


def _in_threads(count: int, work: Callable[[int], list[int | str]]) -> dict[int, list[int | str]]:
    """Run `work(index)` in `count` threads at once; each thread's attempt results by index."""
    results: dict[int, list[int | str]] = {}
    threads = [
        threading.Thread(target=lambda index=index: results.update({index: work(index)})) for index in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_concurrent_updates_for_one_user_end_at_the_newest(url: str, db: firestore.Client) -> None:
    user_id = new_user_id()
    bodies = [
        user_event("user.updated", user_id, emails=[f"v{n}@example.com"], first_name=f"v{n}", updated_at=BASE_MS + n)
        for n in range(THREAD_COUNT)
    ]

    results = _in_threads(THREAD_COUNT, lambda index: deliver(url, bodies[index], message_id=new_message_id()))

    assert all(attempts[-1] in {"applied", "stale"} for attempts in results.values()), results
    stored = _user(db, user_id)
    assert stored is not None
    newest = THREAD_COUNT - 1
    assert (stored["first_name"], stored["email"]) == (f"v{newest}", f"v{newest}@example.com")
    claims = {document.id: document.get("clerk_id") for document in db.collection("email_claims").stream(timeout=10)}
    assert claims == {f"v{newest}@example.com": user_id}
    outcomes = [document.get("outcome") for document in db.collection("webhook_events").stream(timeout=10)]
    assert len(outcomes) == THREAD_COUNT
    assert set(outcomes) <= {"applied", "stale"}


def test_concurrent_deliveries_of_one_message_apply_once(url: str, db: firestore.Client) -> None:
    user_id = new_user_id()
    body = user_event("user.created", user_id)
    message_id = new_message_id()

    results = _in_threads(THREAD_COUNT, lambda _: deliver(url, body, message_id=message_id))

    finals = sorted(attempts[-1] for attempts in results.values() if isinstance(attempts[-1], str))
    assert len(finals) == THREAD_COUNT, results
    # Usually one "applied" and the rest "duplicate"; if the winner's commit outlived its deadline
    # (503, yet committed) everyone may read "duplicate". Never two "applied".
    assert finals.count("applied") <= 1, results
    assert set(finals) <= {"applied", "duplicate"}, results
    records = {
        document.get("svix_id"): document.get("outcome")
        for document in db.collection("webhook_events").stream(timeout=10)
    }
    assert records == {message_id: "applied"}
    assert _user(db, user_id) is not None


@pytest.mark.parametrize("mode", ["delete", "keep-app-fields"])
def test_nested_users_collection_and_deletion_mode_over_a_real_server(
    db: firestore.Client, emulator_host: str, tmp_path: Path, mode: str
) -> None:
    collection = "tenants/acme/users"
    environment = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": emulator_host,
        "USERS_COLLECTION": collection,
        "ON_USER_DELETED": mode,
    }
    server = start_server(tmp_path, environment)
    user_id = new_user_id()
    reference = db.collection(collection).document(user_id)
    try:
        created = user_event("user.created", user_id, emails=["nested@example.com"])
        first = send(server.url, created.encode(), signed_headers(created))
        reference.update({"plan": "pro"}, timeout=10)
        updated = user_event("user.updated", user_id, emails=["nested@example.com"], updated_at=BASE_MS + 1)
        second = send(server.url, updated.encode(), signed_headers(updated))
        kept = reference.get(timeout=10).to_dict()
        deleted = deletion_event(user_id)
        third = send(server.url, deleted.encode(), signed_headers(deleted))
    finally:
        stop_server(server)

    after = reference.get(timeout=10).to_dict()
    assert [reply.json()["outcome"] for reply in (first, second, third)] == ["applied"] * 3
    assert kept is not None
    assert (kept["plan"], kept["first_name"]) == ("pro", "Alice")
    assert db.collection("tenants/acme/user_tombstones").document(user_id).get(timeout=10).exists
    assert not db.collection("tenants/acme/email_claims").document("nested@example.com").get(timeout=10).exists
    assert _user(db, user_id) is None  # nothing in the default collection
    if mode == "delete":
        assert after is None
    else:
        assert after is not None
        assert set(after) == {"plan", "clerk_deleted_at"}

"""Whatever arrives costs bounded memory and time: odd methods, paths and bodies over a raw socket.

functions-framework reads any unread body after a non-streamed answer, so before the fix a 50 MiB
`PUT /` got its 405 only after the whole body had been read into memory. These tests declare a huge
body, send a sliver of it, and expect the answer anyway.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clerk_events import new_user_id, signed_headers, user_event
from conftest import Server, start_server, stop_server

DECLARED_BYTES = 50 * 1024 * 1024
SLIVER = b"x" * 1024
ANSWER_TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def running(emulator_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The function served as deployed (gunicorn) against the emulator."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "THREADS": "8"}
    server = start_server(tmp_path_factory.mktemp("hostile"), environment)
    try:
        yield server
    finally:
        stop_server(server)


def raw_request(url: str, head: str, body: bytes, *, half_close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send `head` and `body` as they are and read the answer (bounded); status, headers, body."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_SECONDS) as connection:
        connection.sendall(head.encode() + b"\r\n" + body)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        while b"\r\n\r\n" not in received or not _complete(received):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer within {ANSWER_TIMEOUT_SECONDS} s: {received[:200]!r}")
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    header_text, _, answer = received.partition(b"\r\n\r\n")
    status_line, *lines = header_text.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, answer


def _complete(received: bytes) -> bool:
    header_text, _, answer = received.partition(b"\r\n\r\n")
    for line in header_text.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(answer) >= int(value)
    return False


def head_of(method: str, path: str, length: int, extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n{extra}"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PUT", "/", 405), ("GET", "/", 405), ("DELETE", "/any/path", 405), ("POST", "/robots.txt", 404)],
)
def test_a_huge_declared_body_is_answered_without_being_read(
    running: Server, method: str, path: str, status: int
) -> None:
    started = time.monotonic()

    answered, _, body = raw_request(running.url, head_of(method, path, DECLARED_BYTES), SLIVER)

    assert answered == status
    assert time.monotonic() - started < ANSWER_TIMEOUT_SECONDS
    assert json.loads(body)["outcome"] in {"method_not_allowed", "not_found"}


def test_a_body_shorter_than_its_content_length_is_400_at_warning(running: Server) -> None:
    text = user_event("user.created", new_user_id())
    signed = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(text).items())
    log_before = len(running.log())

    status, _, body = raw_request(
        running.url, head_of("POST", "/", len(text) + 100, signed), text.encode(), half_close=True
    )

    lines = [json.loads(line) for line in running.log()[log_before:].splitlines() if line.startswith("{")]
    assert (status, json.loads(body)) == (400, {"outcome": "incomplete_body"})
    assert [(line["severity"], line["outcome"], line["status"]) for line in lines] == [
        ("WARNING", "incomplete_body", 400)
    ]


def test_a_misconfigured_function_answers_without_reading_either(emulator_host: str, tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "FIRESTORE_EMULATOR_HOST": emulator_host,
        "CLERK_WEBHOOK_SIGNING_SECRET": "",
        "WEBHOOK_SECRET": "",
    }
    server = start_server(tmp_path, environment)
    try:
        status, _, body = raw_request(server.url, head_of("POST", "/", DECLARED_BYTES), SLIVER)
    finally:
        stop_server(server)

    assert (status, json.loads(body)) == (500, {"outcome": "misconfigured"})

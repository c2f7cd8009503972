"""HTTP over loopback to a real functions-framework server, with bounded timeouts."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from clerk_events import SECRET, signed_headers

TIMEOUT_SECONDS = 15.0
SHUTDOWN_SECONDS = 5.0


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    """Serve `handler` on loopback (a free port unless `port`) until the block ends; yields `http://127.0.0.1:PORT`.

    A handler still busy (say, one made to hang) never holds up the shutdown.
    """
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SHUTDOWN_SECONDS)


@dataclass(frozen=True)
class Reply:
    """What the server answered."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def send(
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    timeout: float = TIMEOUT_SECONDS,
) -> Reply:
    """One ordinary request with urllib."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.read(), dict(error.headers))


def send_streamed(
    url: str,
    chunks: Iterable[bytes],
    headers: Mapping[str, str],
    *,
    content_length: int | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> tuple[Reply, int]:
    """Stream a body (chunked unless `content_length` is given) and read the answer even if the
    server answered early and stopped reading; returns the reply and how many body bytes went out."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.putrequest("POST", parts.path or "/")
        for name, value in headers.items():
            connection.putheader(name, value)
        if content_length is None:
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            connection.putheader("Content-Length", str(content_length))
        connection.endheaders()
        sent = 0
        try:
            for chunk in chunks:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if content_length is None else chunk)
                sent += len(chunk)
            if content_length is None:
                connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all, which is the point
        response = connection.getresponse()
        return Reply(response.status, response.read(), dict(response.headers)), sent
    finally:
        connection.close()


def deliver(
    url: str, body: str, *, message_id: str, secret: str = SECRET, attempts: int = 10, pause: float = 0.2
) -> list[int | str]:
    """Post like Svix: same message id on every attempt, re-signed, retried after any non-2xx or
    network error (bounded); returns each attempt's status, or `outcome` for a 2xx."""
    results: list[int | str] = []
    for _ in range(attempts):
        try:
            reply = send(url, body.encode(), signed_headers(body, message_id=message_id, secret=secret))
        except OSError as error:
            results.append(type(error).__name__)
        else:
            if 200 <= reply.status < 300:
                results.append(str(reply.json()["outcome"]))
                break
            results.append(reply.status)
        time.sleep(pause * (1 + random.random()))  # jitter, so retries of concurrent senders spread
    return results

"""A loopback HTTP proxy in front of the Firebase Auth emulator (or the token function) that can slow down or
fail its answers.

The webhook reaches the Auth emulator through FIREBASE_AUTH_EMULATOR_HOST; pointed here instead,
its calls pass through unchanged, or wait `delay` seconds first (an Auth call that reaches Google
late, after another instance's), or are answered 503 (Firebase Auth unavailable).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from loopback import serving

FORWARD_TIMEOUT_SECONDS = 10.0
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class AuthProxy:
    """How the proxy answers, and what went through it."""

    target: str  # HOST:PORT of the Auth emulator
    host: str = ""  # HOST:PORT of the proxy: the webhook's FIREBASE_AUTH_EMULATOR_HOST
    delay: float = 0.0
    failing: bool = False
    fail_next: int = 0  # answer this many more calls 503, then pass them through again
    calls: list[str] = field(default_factory=list)  # "METHOD path" of each request
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: AuthProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            with state.lock:
                state.calls.append(f"{self.command} {self.path.split('?')[0]}")
            time.sleep(state.delay)
            with state.lock:
                failing_now = state.failing or state.fail_next > 0
                state.fail_next = max(0, state.fail_next - 1)
            if failing_now:
                self._answer(503, {}, b'{"error": {"code": 503, "message": "UNAVAILABLE", "status": "UNAVAILABLE"}}')
                return
            host, port = state.target.rsplit(":", 1)
            upstream = http.client.HTTPConnection(host, int(port), timeout=FORWARD_TIMEOUT_SECONDS)
            try:
                headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = {name: value for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP}
                self._answer(response.status, kept, data)
            finally:
                upstream.close()

        def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if not any(name.lower() == "content-type" for name in headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _forward

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test output is for the tests."""

    return Handler


@contextmanager
def proxying(target: str) -> Iterator[AuthProxy]:
    """The proxy on a free loopback port until the block ends."""
    state = AuthProxy(target=target)
    with serving(_handler(state)) as url:
        state.host = url.removeprefix("http://")
        yield state

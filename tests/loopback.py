"""HTTP over loopback to a real functions-framework server, with bounded timeouts."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clerk_events import SECRET, signed_headers

TIMEOUT_SECONDS = 15.0


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
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    timeout: float = TIMEOUT_SECONDS,
) -> Reply:
    """One request; an iterable body without Content-Length goes out chunked (urllib's rule)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.read(), dict(error.headers))


def deliver(
    url: str, body: str, *, message_id: str, secret: str = SECRET, attempts: int = 10, pause: float = 0.2
) -> list[int]:
    """Post like Svix: same message id on every attempt, re-signed, retried on non-2xx (bounded)."""
    statuses: list[int] = []
    for _ in range(attempts):
        reply = send(url, body.encode(), signed_headers(body, message_id=message_id, secret=secret))
        statuses.append(reply.status)
        if 200 <= reply.status < 300:
            break
        time.sleep(pause)
    return statuses

"""Every gRPC call a Firestore client makes, counted by an interceptor on its emulator channel.

The code under test runs unchanged; only the client differs, in that its channel is wrapped with
`grpc.intercept_channel`. Used by tests/test_transaction.py and bench/round_trips.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from google.cloud import firestore


class CallCounter(  # grpc ships no type hints: its interceptor bases are Any to mypy
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Counts calls by method name, plus documents read and writes sent."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, Any]] = []  # (method, request) in the order sent
        self._lock = threading.Lock()

    def _count(self, details: grpc.ClientCallDetails, request: object) -> None:
        method = str(details.method).rsplit("/", 1)[-1]
        with self._lock:
            self.calls[method] += 1
            self.requests.append((method, request))
            if method == "BatchGetDocuments":
                self.calls["documents read"] += len(getattr(request, "documents", []))
            if method == "Commit":
                self.calls["writes"] += len(getattr(request, "writes", []))

    def take(self) -> Counter[str]:
        with self._lock:
            taken, self.calls, self.requests = self.calls, Counter(), []
        return taken

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self._count(details, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self._count(details, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        self._count(details, None)
        return continuation(details, requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        self._count(details, None)
        return continuation(details, requests)


def counting_client(project: str, counter: CallCounter) -> firestore.Client:
    """A client (on FIRESTORE_EMULATOR_HOST) whose every call passes through `counter`."""

    class CountingClient(firestore.Client):
        def _emulator_channel(self, transport: Any) -> grpc.Channel:
            return grpc.intercept_channel(super()._emulator_channel(transport), counter)  # type: ignore[no-untyped-call]

    return CountingClient(project=project)

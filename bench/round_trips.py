"""Round trips per event: every gRPC call the store makes, counted by an interceptor on the client's channel.

The production code path (`clerk_sync.store.apply_event`) runs unchanged; only the benchmark's client
differs, in that its emulator channel is wrapped with `grpc.intercept_channel`. Expected for every
outcome: BeginTransaction + one BatchGetDocuments + Commit; a conflict reads the claim's owner too.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import harness
from google.cloud import firestore
from harness import Table

from clerk_sync import events, users

DEADLINE_SECONDS = 8.0
EVENT_TTL = timedelta(days=30)
BASE_MS = 1_756_382_400_000


class CallCounter(  # grpc ships no type hints: its interceptor bases are Any to mypy
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Counts calls by method name, plus documents read and writes sent."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, details: grpc.ClientCallDetails, request: object) -> None:
        method = str(details.method).rsplit("/", 1)[-1]
        with self._lock:
            self.calls[method] += 1
            if method == "BatchGetDocuments":
                self.calls["documents read"] += len(getattr(request, "documents", []))
            if method == "Commit":
                self.calls["writes"] += len(getattr(request, "writes", []))

    def take(self) -> Counter[str]:
        with self._lock:
            taken, self.calls = self.calls, Counter()
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


COUNTER = CallCounter()


class CountingClient(firestore.Client):
    """A Firestore client whose emulator channel passes every call through COUNTER."""

    def _emulator_channel(self, transport: Any) -> grpc.Channel:
        return grpc.intercept_channel(super()._emulator_channel(transport), COUNTER)  # type: ignore[no-untyped-call]


def upsert(user_id: str, *, email: str | None, updated_at: int) -> users.UserUpsert:
    body = harness.user_event(
        "user.updated",
        user_id,
        emails=[email] if email else [],
        phones=[] if email else ["+15550100"],
        updated_at=updated_at,
    )
    event = events.parse_event(body.encode())
    assert isinstance(event, users.UserUpsert)
    return event


def deletion(user_id: str) -> users.UserDeletion:
    event = events.parse_event(harness.deletion_event(user_id).encode())
    assert isinstance(event, users.UserDeletion)
    return event


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        "gRPC calls per event (interceptor on the Firestore channel; events.apply_event unchanged)",
        [
            "event",
            "outcome",
            "Begin",
            "BatchGet",
            "docs read",
            "Commit",
            "writes",
            "Rollback",
            "calls",
            "expected calls",
            "result",
        ],
    )
    rows: dict[str, dict[str, int]] = {}
    with harness.running_emulator() as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        client = CountingClient(project=harness.PROJECT)

        def apply(message_id: str, event: users.UserUpsert | users.UserDeletion) -> str:
            return str(harness.apply(client, message_id, event, DEADLINE_SECONDS))

        apply("msg_warm", upsert("user_warm", email="warm@example.com", updated_at=BASE_MS))  # channel up
        COUNTER.take()
        scenarios: list[tuple[str, str, users.UserUpsert | users.UserDeletion, int]] = [
            ("create with email", "msg_a1", upsert("user_a", email="a@example.com", updated_at=BASE_MS), 3),
            ("same delivery again", "msg_a1", upsert("user_a", email="a@example.com", updated_at=BASE_MS), 3),
            ("update, email change", "msg_a2", upsert("user_a", email="a2@example.com", updated_at=BASE_MS + 2), 3),
            ("older update", "msg_a3", upsert("user_a", email="a@example.com", updated_at=BASE_MS + 1), 3),
            ("email owned by another", "msg_b1", upsert("user_b", email="a2@example.com", updated_at=BASE_MS), 4),
            ("create, phone only", "msg_c1", upsert("user_c", email=None, updated_at=BASE_MS), 3),
            ("delete", "msg_a4", deletion("user_a"), 3),
            ("update after delete", "msg_a5", upsert("user_a", email="a@example.com", updated_at=BASE_MS + 9), 3),
        ]
        for label, message_id, event, expected in scenarios:
            outcome = apply(message_id, event)
            calls = COUNTER.take()
            total = sum(count for method, count in calls.items() if method not in {"documents read", "writes"})
            rows[label] = {"calls": total, "expected": expected, **calls}
            table.rows.append(
                [
                    label,
                    outcome,
                    str(calls["BeginTransaction"]),
                    str(calls["BatchGetDocuments"]),
                    str(calls["documents read"]),
                    str(calls["Commit"]),
                    str(calls["writes"]),
                    str(calls["Rollback"]),
                    str(total),
                    str(expected),
                    harness.verdict(total == expected),
                ]
            )
    harness.save("round_trips", info, [table], {"events": rows})


if __name__ == "__main__":
    main()

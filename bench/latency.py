"""Per-event latency and throughput through the real server, against the same transactions issued directly.

For each concurrency C (1, 8, 32) the function is served by `functions-framework` with THREADS=C and
C client threads post signed user.created events for distinct users over keep-alive connections.
The floor runs the very same transactions (`clerk_sync.store.apply_event` on pre-parsed events) from a
pool of C threads in this process, without HTTP, verification or parsing. A one-user variant updates a
single user from C threads (contention). Target: server throughput at C=8 at least 80% of the floor's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import harness
from harness import ROOT, LoadResult, Table

from clerk_sync import events, store

CONCURRENCY = (1, 8, 32)
EVENTS = {1: 200, 8: 600, 32: 900}
ONE_USER_EVENTS = 24  # each blocked commit waits seconds on the emulator: keep it small
WARM_UP_EVENTS = 20
TARGET_CONCURRENCY = 8
TARGET_RATIO = 0.80
DEADLINE_SECONDS = 8.0
EVENT_TTL = timedelta(days=30)
BASE_MS = 1_756_382_400_000


def distinct_users(count: int, tag: str) -> list[str]:
    """user.created bodies for `count` different users, each with an email of their own."""
    return [
        harness.user_event("user.created", f"user_{tag}{index}", emails=[f"{tag}{index}@example.com"])
        for index in range(count)
    ]


def one_user(count: int, tag: str) -> list[str]:
    """user.updated bodies for one user, each newer than the last (so order decides applied vs stale)."""
    return [
        harness.user_event("user.updated", f"user_{tag}", emails=[f"{tag}@example.com"], updated_at=BASE_MS + index)
        for index in range(count)
    ]


def signed(bodies: list[str]) -> list[tuple[bytes, dict[str, str]]]:
    return [(body.encode(), harness.signed_headers(body)) for body in bodies]


def through_server(host: str, concurrency: int, batches: dict[str, list[str]]) -> dict[str, LoadResult]:
    """Serve with THREADS=concurrency and post each batch of bodies from `concurrency` threads."""
    results: dict[str, LoadResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as directory:
        server = harness.spawn_server(
            "clerk_webhook",
            ROOT / "main.py",
            harness.server_environment(host, concurrency),
            Path(directory) / "server.log",
        )
        try:
            harness.wait_serving(server)
            harness.run_load(concurrency, harness.http_jobs(server.port, signed(distinct_users(WARM_UP_EVENTS, "w"))))
            for name, bodies in batches.items():
                harness.wipe(host)
                results[name] = harness.run_load(concurrency, harness.http_jobs(server.port, signed(bodies)))
        finally:
            harness.stop_server(server)
    return results


def directly(host: str, concurrency: int, batches: dict[str, list[str]]) -> dict[str, LoadResult]:
    """The floor: the same transactions from `concurrency` threads of this process, no HTTP."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    store.reset_client()
    client = store.client(harness.PROJECT)

    def jobs(bodies: list[str]) -> list[Callable[[], str]]:
        parsed = [events.parse_event(body.encode()) for body in bodies]

        def job_for(event: events.Event) -> Callable[[], str]:
            assert not isinstance(event, events.IgnoredEvent)

            def job() -> str:
                try:
                    return str(
                        store.apply_event(
                            client,
                            harness.new_message_id(),
                            event,
                            deadline_seconds=DEADLINE_SECONDS,
                            event_ttl=EVENT_TTL,
                        )
                    )
                except store.StoreUnavailable:
                    return "unavailable"

            return job

        return [job_for(event) for event in parsed]

    harness.run_load(concurrency, jobs(distinct_users(WARM_UP_EVENTS, "dw")))
    results = {}
    for name, bodies in batches.items():
        harness.wipe(host)
        results[name] = harness.run_load(concurrency, jobs(bodies))
    return results


def outcomes(result: LoadResult) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(result.statuses.items()))


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        "Per event: distinct users, real server (THREADS = C) vs the same transactions called directly",
        [
            "C",
            "server p50 ms",
            "server p99 ms",
            "server ev/s",
            "floor p50 ms",
            "floor p99 ms",
            "floor ev/s",
            "throughput ratio",
            "target",
            "result",
        ],
    )
    contention = Table(
        f"One user, {ONE_USER_EVENTS} newer-and-newer updates from C threads (contention on one document)",
        ["C", "path", "p50 ms", "p99 ms", "ev/s", "outcomes"],
    )
    numbers: dict[str, object] = {}
    with harness.running_emulator() as host:
        for concurrency in CONCURRENCY:
            batches = {"distinct": distinct_users(EVENTS[concurrency], f"c{concurrency}_")}
            if concurrency == TARGET_CONCURRENCY:
                batches["one_user"] = one_user(ONE_USER_EVENTS, f"one{concurrency}")
            floor = directly(host, concurrency, {name: list(bodies) for name, bodies in batches.items()})
            served = through_server(host, concurrency, batches)
            ratio = served["distinct"].throughput / floor["distinct"].throughput
            judged = concurrency == TARGET_CONCURRENCY
            table.rows.append(
                [
                    str(concurrency),
                    *served["distinct"].row(),
                    *floor["distinct"].row(),
                    f"{ratio:.2f}",
                    f">= {TARGET_RATIO:.2f}" if judged else "",
                    harness.verdict(ratio >= TARGET_RATIO) if judged else "",
                ]
            )
            numbers[f"c{concurrency}"] = {
                "server": vars(served["distinct"]),
                "floor": vars(floor["distinct"]),
                "ratio": ratio,
            }
            if "one_user" in batches:
                for path, result in (("server", served["one_user"]), ("floor", floor["one_user"])):
                    contention.rows.append([str(concurrency), path, *result.row(), outcomes(result)])
                numbers["one_user"] = {"server": vars(served["one_user"]), "floor": vars(floor["one_user"])}
            for path, result in (("server", served["distinct"]), ("floor", floor["distinct"])):
                expected = "200" if path == "server" else "applied"
                if result.statuses != {expected: len(result.latencies)}:
                    print(f"warning: C={concurrency} {path} outcomes: {outcomes(result)}")
    harness.save("latency", info, [table, contention], numbers)


if __name__ == "__main__":
    main()

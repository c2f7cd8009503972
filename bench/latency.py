"""Per-event latency and throughput through the real server, against the same transactions issued directly.

For each concurrency C (1, 8, 32) the function is served by `functions-framework` with THREADS=C and
C client threads post signed user.created events for distinct users over keep-alive connections.
The floor runs the very same transactions (`clerk_sync.events.apply_event` on pre-parsed events) from a
pool of C threads in this process, without HTTP, verification or parsing. A one-user variant updates a
single user from C threads (contention). Target: server throughput at C=8 at least 80% of the floor's.
A second floor, `bench/http_floor_app.py`, serves the same transaction through functions-framework
without verification or logging: it splits the gap into the HTTP stack's share and our code's. A
third, `bench/transactional_floor_app.py`, is a plain functions-framework function doing one
`@firestore.transactional` read and write (3 RPCs, nothing else): the webhook, with signature,
idempotency record, ordering and claims in 2 RPCs, should keep up with it (target: >= 1.00 at C=8).

All of it shares one machine, so the CPU each party used is measured too (from /proc): the function's
process group, the load generator (this process), the emulator. It shows where a throughput gap comes from.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import harness
from harness import ROOT, LoadResult, Table

from clerk_sync import events, transaction
from clerk_sync.outcome import StoreUnavailable

CONCURRENCY = (1, 8, 32)
EVENTS = {1: 200, 8: 600, 32: 900}
REPEATS = 5  # per path and concurrency; the run with the median throughput is reported
ONE_USER_EVENTS = 24  # a blocked commit can wait seconds on the emulator: keep it small
WARM_UP_EVENTS = 20
TARGET_CONCURRENCY = 8
TARGET_RATIO = 0.80
DEADLINE_SECONDS = 8.0
EVENT_TTL = timedelta(days=30)
BASE_MS = 1_756_382_400_000
MAIN = ROOT / "main.py"
HTTP_FLOOR = ROOT / "bench" / "http_floor_app.py"
LIBRARY_FLOOR = ROOT / "bench" / "transactional_floor_app.py"
LIBRARY_TARGET_RATIO = 1.00


@dataclass
class Run:
    """One load run and the CPU seconds each party used during it."""

    load: LoadResult
    served_cpu: float  # the function's process group (0 for the floor: it runs in this process)
    local_cpu: float  # this process: the load generator, or the floor's transactions
    emulator_cpu: float

    def cpu_ms_per_event(self, seconds: float) -> str:
        return f"{seconds * 1000 / len(self.load.latencies):.2f}"


def measured(host: str, server_group: int | None, concurrency: int, jobs: list[Callable[[], str]]) -> Run:
    emulator_group = harness.EMULATOR_GROUPS[host]

    def served() -> float:
        return harness.group_cpu_seconds(server_group) if server_group else 0.0

    before = (served(), time.process_time(), harness.group_cpu_seconds(emulator_group))
    load = harness.run_load(concurrency, jobs)
    after = (served(), time.process_time(), harness.group_cpu_seconds(emulator_group))
    return Run(load, *(end - start for start, end in zip(before, after, strict=True)))


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


@contextmanager
def served(host: str, concurrency: int, target: str, source: Path) -> Iterator[Callable[[list[str]], Run]]:
    """Serve `target` with THREADS=concurrency; yields a function that posts a batch and measures it."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as directory:
        # An empty database, as a new deployment's (or one whose records under pre-hash ids have
        # expired): the server's first event finds no event records, so it reads no legacy ids.
        harness.wipe(host)
        server = harness.spawn_server(
            target,
            source,
            {**harness.server_environment(host, concurrency), "PYTHONPATH": str(ROOT)},  # clerk_sync for bench/
            Path(directory) / "server.log",
        )
        try:
            harness.wait_serving(server)
            harness.run_load(concurrency, harness.http_jobs(server.port, signed(distinct_users(WARM_UP_EVENTS, "w"))))

            def run(bodies: list[str]) -> Run:
                harness.wipe(host)
                return measured(host, server.process.pid, concurrency, harness.http_jobs(server.port, signed(bodies)))

            yield run
        finally:
            harness.stop_server(server)


def direct(host: str, concurrency: int) -> Callable[[list[str]], Run]:
    """The floor: the same transactions from `concurrency` threads of this process, no HTTP."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    transaction.reset_client()
    client = transaction.client(harness.PROJECT)

    def jobs(bodies: list[str]) -> list[Callable[[], str]]:
        parsed = [events.parse_event(body.encode()) for body in bodies]

        def job_for(event: events.Event) -> Callable[[], str]:
            assert not isinstance(event, events.IgnoredEvent)

            def job() -> str:
                try:
                    return harness.apply(client, harness.new_message_id(), event, DEADLINE_SECONDS)
                except StoreUnavailable:
                    return "unavailable"

            return job

        return [job_for(event) for event in parsed]

    harness.run_load(concurrency, jobs(distinct_users(WARM_UP_EVENTS, "dw")))

    def run(bodies: list[str]) -> Run:
        harness.wipe(host)
        return measured(host, None, concurrency, jobs(bodies))

    return run


def median_run(runs: list[Run]) -> Run:
    """The run with the median throughput (its latencies and CPU are reported together)."""
    return sorted(runs, key=lambda run: run.load.throughput)[len(runs) // 2]


def outcomes(result: LoadResult) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(result.statuses.items()))


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        f"Per event: distinct users, real server (THREADS = C) vs the same transactions called directly "
        f"({REPEATS} interleaved repeats: the median-throughput run shown, ratios = median of the paired ratios)",
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
            "HTTP floor ev/s",
            "server / HTTP floor",
            "library floor ev/s",
            "server / library floor",
            "target",
            "result",
        ],
    )
    cpu = Table(
        "CPU per event (ms, all threads, from /proc) during the runs above: who used the 2 cores",
        ["C", "path", "function process", "this process", "emulator", "total", "cores busy"],
    )
    contention = Table(
        f"One user, {ONE_USER_EVENTS} newer-and-newer updates from C threads (contention on one document)",
        ["C", "path", "p50 ms", "p99 ms", "ev/s", "outcomes"],
    )
    numbers: dict[str, object] = {}
    with harness.running_emulator() as host:
        for concurrency in CONCURRENCY:
            runs: dict[str, list[Run]] = {"server": [], "HTTP floor": [], "floor": [], "library floor": []}
            with (
                served(host, concurrency, "clerk_webhook", MAIN) as server_run,
                served(host, concurrency, "transaction_only", HTTP_FLOOR) as http_floor_run,
                served(host, concurrency, "transactional_floor", LIBRARY_FLOOR) as library_floor_run,
            ):
                floor_run = direct(host, concurrency)
                for repeat in range(REPEATS):  # interleaved, so drift in the machine's load hits all four
                    order = [
                        ("floor", floor_run),
                        ("server", server_run),
                        ("HTTP floor", http_floor_run),
                        ("library floor", library_floor_run),
                    ]
                    for path, run_batch in order[repeat % 4 :] + order[: repeat % 4]:  # no path always first
                        runs[path].append(
                            run_batch(distinct_users(EVENTS[concurrency], f"c{concurrency}r{repeat}{path[0]}"))
                        )
                if concurrency == TARGET_CONCURRENCY:
                    bodies = one_user(ONE_USER_EVENTS, f"one{concurrency}")
                    one_user_runs = {"server": server_run(bodies), "floor": floor_run(bodies)}
            chosen = {path: median_run(path_runs) for path, path_runs in runs.items()}
            server, http_floor, floor = chosen["server"], chosen["HTTP floor"], chosen["floor"]
            library_floor = chosen["library floor"]
            # Each repeat's three runs are seconds apart: their ratio is the least disturbed by other load.
            ratio = statistics.median(
                served_run.load.throughput / floor_run_.load.throughput
                for served_run, floor_run_ in zip(runs["server"], runs["floor"], strict=True)
            )
            http_ratio = statistics.median(
                served_run.load.throughput / http_run.load.throughput
                for served_run, http_run in zip(runs["server"], runs["HTTP floor"], strict=True)
            )
            library_ratio = statistics.median(
                served_run.load.throughput / library_run.load.throughput
                for served_run, library_run in zip(runs["server"], runs["library floor"], strict=True)
            )
            judged = concurrency == TARGET_CONCURRENCY
            table.rows.append(
                [
                    str(concurrency),
                    *server.load.row(),
                    *floor.load.row(),
                    f"{ratio:.3f}",
                    f">= {TARGET_RATIO:.2f}" if judged else "",
                    harness.verdict(ratio >= TARGET_RATIO) if judged else "",
                    f"{http_floor.load.throughput:.0f}",
                    f"{http_ratio:.3f}",
                    f"{library_floor.load.throughput:.0f}",
                    f"{library_ratio:.3f}",
                    f">= {LIBRARY_TARGET_RATIO:.2f}" if judged else "",
                    harness.verdict(library_ratio >= LIBRARY_TARGET_RATIO) if judged else "",
                ]
            )
            paths = (
                ("server", server, "load generator"),
                ("HTTP floor", http_floor, "load generator"),
                ("library floor", library_floor, "load generator"),
                ("floor", floor, "transactions"),
            )
            for path, distinct, local in paths:
                total = distinct.served_cpu + distinct.local_cpu + distinct.emulator_cpu
                cpu.rows.append(
                    [
                        str(concurrency),
                        f"{path} ({local} here)",
                        distinct.cpu_ms_per_event(distinct.served_cpu) if path != "floor" else "-",
                        distinct.cpu_ms_per_event(distinct.local_cpu),
                        distinct.cpu_ms_per_event(distinct.emulator_cpu),
                        distinct.cpu_ms_per_event(total),
                        f"{total / distinct.load.wall_seconds:.2f}",
                    ]
                )
            numbers[f"c{concurrency}"] = {
                "server": {**vars(server.load), **_cpu(server)},
                "floor": {**vars(floor.load), **_cpu(floor)},
                "http_floor": {**vars(http_floor.load), **_cpu(http_floor)},
                "library_floor": {**vars(library_floor.load), **_cpu(library_floor)},
                "ratio": ratio,
                "library_ratio": library_ratio,
                "throughputs": {path: [run.load.throughput for run in path_runs] for path, path_runs in runs.items()},
            }
            if concurrency == TARGET_CONCURRENCY:
                for path, one in one_user_runs.items():
                    contention.rows.append([str(concurrency), path, *one.load.row(), outcomes(one.load)])
                numbers["one_user"] = {path: vars(one.load) for path, one in one_user_runs.items()}
            for path, path_runs in runs.items():
                expected = "applied" if path == "floor" else "200"
                for each in path_runs:
                    if each.load.statuses != {expected: len(each.load.latencies)}:
                        print(f"warning: C={concurrency} {path} outcomes: {outcomes(each.load)}")
    harness.save("latency", info, [table, cpu, contention], numbers)


def _cpu(run: Run) -> dict[str, float]:
    return {"served_cpu": run.served_cpu, "local_cpu": run.local_cpu, "emulator_cpu": run.emulator_cpu}


if __name__ == "__main__":
    main()

"""Per-event latency when every Firestore round trip costs network time, ours against the library's transaction.

On Cloud Functions each RPC is a round trip to Firestore (about 10 ms in the same region). Here a
loopback proxy (`bench/delay_proxy.py`, a process of its own) sits between the clients and the
emulator and holds each chunk DELAY_MS in each direction. `FIRESTORE_EMULATOR_HOST` points at it.
Measured in one run, interleaved, for distinct `user.created` events, one at a time and from 8
threads:
- server: `main.py` served by functions-framework (THREADS=8, as deployed), signed requests;
- ours: `clerk_sync.events.apply_event` on pre-parsed events, in this process;
- library: the same transaction body through `@firestore.transactional` on the stock client:
  BeginTransaction, `transaction.get_all` of the same 4 documents, the same 3 writes, Commit;
each over three networks: straight to the emulator, the proxy at 0 ms, the proxy at DELAY_MS each way.
Round trips are counted twice: the HTTP/2 requests the proxy saw per event (every path), and the
interceptor of `tests/rpc_count.py` on the in-process clients (per method).
Expected: ours about 2 x RTT + processing, the library's about 3 x RTT + processing.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import harness
from google.cloud import firestore
from harness import ROOT, LoadResult, Table

# isort: split
import emulator  # tests/ is on the path from `import harness` on
from rpc_count import CallCounter, counting_client

from clerk_sync import config, events, kind, transaction
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import StoreUnavailable

DELAY_MS = float(os.environ.get("BENCH_DELAY_MS", "5"))  # each way
RTT_MS = 2 * DELAY_MS
CONCURRENCY = (1, 8)
EVENTS = {1: 120, 8: 400}  # per run
REPEATS = int(os.environ.get("BENCH_DELAY_REPEATS", "3"))  # interleaved; the latencies of all repeats are pooled
SERVER_THREADS = 8  # `make deploy`'s --concurrency and THREADS
WARM_UP_EVENTS = 16
PROBES = 40
DEADLINE_SECONDS = 8.0
PROXY = ROOT / "bench" / "delay_proxy.py"
PROXY_MAX_SECONDS = 1800.0
PROXY_ANSWER_SECONDS = 10.0
EXPECTED_CALLS = {"server": 2, "ours": 2, "library": 3}
PATHS = {
    "server": "server (functions-framework, signed)",
    "ours": "ours: apply_event, pre-parsed",
    "library": "library: @firestore.transactional",
}
DIRECT, NO_DELAY, DELAYED = "direct", "proxy 0 ms", f"proxy {DELAY_MS:g}+{DELAY_MS:g} ms"
NETWORKS = (DIRECT, NO_DELAY, DELAYED)
COUNTER = CallCounter()
METHODS = ("BeginTransaction", "BatchGetDocuments", "Commit", "Rollback", "documents read", "writes")


class Proxies:
    """The proxy process: one listener per delay; `stats()` asks it what each listener carried."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._buffer = b""
        self.ports: list[int] = self._answer()["ports"]

    def _answer(self) -> Any:
        assert self.process.stdout is not None
        deadline = time.monotonic() + PROXY_ANSWER_SECONDS
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the delay proxy did not answer within {PROXY_ANSWER_SECONDS}s")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the delay proxy exited ({self.process.poll()})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def stats(self) -> list[dict[str, Any]]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        return cast(list[dict[str, Any]], self._answer())


@contextmanager
def delay_proxies(upstream: str, delays_ms: Sequence[float], log_path: Path) -> Iterator[Proxies]:
    """Start the proxy process (own process group) in front of `upstream`; stopped on the way out."""
    command = [sys.executable, str(PROXY), f"--upstream={upstream}", f"--max-seconds={PROXY_MAX_SECONDS}"]
    command += [f"--delay-ms={delay}" for delay in delays_ms]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0, start_new_session=True
        )
    try:
        yield Proxies(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the proxy exits on end of input; the group is stopped regardless
        emulator.stop(process)


@dataclass
class Run:
    """One load run: its latencies, the requests the proxy saw and the calls the interceptor saw."""

    load: LoadResult
    proxy_requests: int | None
    calls: Counter[str]

    @property
    def events(self) -> int:
        return len(self.load.latencies)


class LibraryAttempt:
    """Our transaction body's view of a transaction, on the library's `Transaction` (stock client).

    The body reads and writes exactly what it does in our core; the transaction around it is the
    library's: BeginTransaction, then `get_all` with the transaction id, then Commit.
    """

    def __init__(self, db: firestore.Client, library_transaction: firestore.Transaction) -> None:
        self.db = db
        self._transaction = library_transaction

    def read(self, references: Sequence[firestore.DocumentReference]) -> dict[str, Any]:
        return {snapshot.reference.path: snapshot for snapshot in self._transaction.get_all(list(references))}

    def set(self, reference: firestore.DocumentReference, data: dict[str, Any], *, merge: Sequence[str] = ()) -> None:
        self._transaction.set(reference, data, merge=list(merge) if merge else False)

    def delete(self, reference: firestore.DocumentReference) -> None:
        self._transaction.delete(reference)


def parsed_upserts(bodies: list[str]) -> list[kind.Upsert]:
    parsed = [events.parse_event(body.encode()) for body in bodies]
    assert all(isinstance(event, kind.Upsert) for event in parsed)
    return cast(list[kind.Upsert], parsed)


def in_process_jobs(path: str, db: firestore.Client, bodies: list[str]) -> list[Callable[[], str]]:
    """Jobs applying pre-parsed events through our core ("ours") or the library's transaction."""
    settings = config.read_settings()
    settings = type(settings)(**{**settings.__dict__, "firestore_deadline_seconds": DEADLINE_SECONDS})

    def ours(event: kind.Upsert) -> Callable[[], str]:
        def job() -> str:
            delivery = Delivery(message_id=harness.new_message_id(), settings=settings)
            try:
                return str(events.apply_event(db, event, delivery))
            except StoreUnavailable:
                return "unavailable"

        return job

    def library(event: kind.Upsert) -> Callable[[], str]:
        @firestore.transactional
        def body(library_transaction: firestore.Transaction, delivery: Delivery) -> str:
            attempt = cast(transaction.Attempt, LibraryAttempt(db, library_transaction))
            return str(event.transact(attempt, delivery))

        def job() -> str:
            delivery = Delivery(message_id=harness.new_message_id(), settings=settings)
            return cast(str, body(db.transaction(), delivery))

        return job

    make = ours if path == "ours" else library
    return [make(event) for event in parsed_upserts(bodies)]


def distinct_users(count: int, tag: str) -> list[str]:
    return [
        harness.user_event("user.created", f"user_{tag}{index}", emails=[f"{tag}{index}@example.com"])
        for index in range(count)
    ]


def probe_latencies(host: str) -> list[float]:
    """Seconds per `GET /` (the emulator's health check, HTTP/1.1) on a fresh connection through `host`."""
    address, _, port = host.rpartition(":")
    latencies = []
    for _ in range(PROBES):
        connection = http.client.HTTPConnection(address, int(port), timeout=10)
        try:
            started = time.perf_counter()
            connection.request("GET", "/")
            connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
        finally:
            connection.close()
    return latencies


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    runs: dict[tuple[str, str, int], list[Run]] = {}
    probes: dict[str, list[float]] = {}
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-delay-")))
        emulator_host = stack.enter_context(harness.running_emulator())
        proxies = stack.enter_context(delay_proxies(emulator_host, [0, DELAY_MS], directory / "proxy.log"))
        hosts = {
            DIRECT: emulator_host,
            NO_DELAY: f"127.0.0.1:{proxies.ports[0]}",
            DELAYED: f"127.0.0.1:{proxies.ports[1]}",
        }
        listener = {NO_DELAY: 0, DELAYED: 1}
        for network, host in hosts.items():
            probes[network] = probe_latencies(host)
        servers: dict[str, harness.Server] = {}
        for network, host in hosts.items():
            server = harness.spawn_server(
                "clerk_webhook",
                ROOT / "main.py",
                harness.server_environment(host, SERVER_THREADS),
                directory / f"server-{len(servers)}.log",
            )
            stack.callback(harness.stop_server, server)
            servers[network] = server
        clients: dict[str, firestore.Client] = {}
        for network, host in hosts.items():
            os.environ["FIRESTORE_EMULATOR_HOST"] = host  # read when the client is built
            clients[network] = counting_client(harness.PROJECT, COUNTER)
        for number, network in enumerate(NETWORKS):  # connections up, clients built, code paths warm
            harness.wait_serving(servers[network])
            warm = distinct_users(WARM_UP_EVENTS, f"warm{number}")
            harness.run_load(SERVER_THREADS, harness.http_jobs(servers[network].port, signed(warm)))
            for path in ("ours", "library"):
                harness.run_load(1, in_process_jobs(path, clients[network], distinct_users(4, f"warm{number}{path}")))

        def run(path: str, network: str, concurrency: int, tag: str) -> Run:
            bodies = distinct_users(EVENTS[concurrency], tag)
            if path == "server":
                jobs = harness.http_jobs(servers[network].port, signed(bodies))
            else:
                jobs = in_process_jobs(path, clients[network], bodies)
            harness.wipe(emulator_host)
            index = listener.get(network)
            before = proxies.stats()[index]["requests"] if index is not None else 0
            COUNTER.take()
            load = harness.run_load(concurrency, jobs)
            calls = COUNTER.take()
            after = proxies.stats()[index]["requests"] if index is not None else 0
            return Run(load, after - before if index is not None else None, calls)

        combinations = [(path, network) for network in NETWORKS for path in PATHS]
        for repeat in range(REPEATS):
            for concurrency in CONCURRENCY:
                shift = (repeat * 4 + concurrency) % len(combinations)  # no combination always first
                for number, (path, network) in enumerate(combinations[shift:] + combinations[:shift]):
                    tag = f"r{repeat}c{concurrency}n{number}"
                    runs.setdefault((path, network, concurrency), []).append(run(path, network, concurrency, tag))
        proxy_stats = proxies.stats()
    report(info, runs, probes, proxy_stats)


def signed(bodies: list[str]) -> list[tuple[bytes, dict[str, str]]]:
    return [(body.encode(), harness.signed_headers(body)) for body in bodies]


def pooled(runs: list[Run]) -> list[float]:
    return [latency for run in runs for latency in run.load.latencies]


def report(
    info: dict[str, str],
    runs: dict[tuple[str, str, int], list[Run]],
    probes: dict[str, list[float]],
    proxy_stats: list[dict[str, Any]],
) -> None:
    rtt = RTT_MS / 1000
    network_table = Table(
        f"The networks: GET / to the emulator ({PROBES} fresh connections each); the proxy's punctuality over the run",
        ["network", "probe p50 ms", "probe p99 ms", "chunks sent", "late per chunk: mean ms", "max ms"],
    )
    for network in NETWORKS:
        row = [network, ms(harness.percentile(probes[network], 50)), ms(harness.percentile(probes[network], 99))]
        if network == DIRECT:
            row += ["-", "-", "-"]
        else:
            stats = proxy_stats[0 if network == NO_DELAY else 1]
            chunks = stats["up"]["chunks"] + stats["down"]["chunks"]
            late = stats["up"]["late_total_seconds"] + stats["down"]["late_total_seconds"]
            worst = max(stats["up"]["late_max_seconds"], stats["down"]["late_max_seconds"])
            row += [str(chunks), f"{late / max(chunks, 1) * 1000:.2f}", ms(worst)]
        network_table.rows.append(row)

    latency = Table(
        f"Per event, distinct users: {DELAYED} = {RTT_MS:g} ms per round trip "
        f"({REPEATS} interleaved repeats pooled: {' / '.join(str(EVENTS[c] * REPEATS) for c in CONCURRENCY)} events "
        "at C = " + " / ".join(str(c) for c in CONCURRENCY) + ")",
        [
            "C",
            "path",
            "direct p50 / p99 ms",
            "proxy 0 ms p50 / p99",
            f"{DELAYED} p50 / p99",
            "p50 added by the delay",
            f"added / {RTT_MS:g} ms",
            "RPCs per event",
        ],
    )
    counted = Table(
        f"Round trips per event in the {DELAYED} runs: HTTP/2 requests seen by the proxy, gRPC calls seen by "
        "the interceptor (in-process clients only); throughput",
        [
            "C",
            "path",
            "events",
            "proxy: requests / event",
            "Begin",
            "BatchGet",
            "Commit",
            "Rollback",
            "docs read",
            "writes",
            "expected calls",
            "result",
            "ev/s 0 ms",
            f"ev/s {RTT_MS:g} ms RTT",
        ],
    )
    numbers: dict[str, object] = {"delay_ms_each_way": DELAY_MS, "proxy": proxy_stats, "probes": probes}
    for concurrency in CONCURRENCY:
        for path, label in PATHS.items():
            chosen = {network: runs[(path, network, concurrency)] for network in NETWORKS}
            latencies = {network: pooled(each) for network, each in chosen.items()}
            p50 = {network: harness.percentile(values, 50) for network, values in latencies.items()}
            p99 = {network: harness.percentile(values, 99) for network, values in latencies.items()}
            added = p50[DELAYED] - p50[NO_DELAY]
            delayed = chosen[DELAYED]
            events_seen = sum(run.events for run in delayed)
            proxy_requests = sum(run.proxy_requests or 0 for run in delayed)
            per_event = proxy_requests / events_seen
            latency.rows.append(
                [
                    str(concurrency),
                    label,
                    *(f"{ms(p50[network])} / {ms(p99[network])}" for network in NETWORKS),
                    ms(added),
                    f"{added / rtt:.2f}",
                    f"{per_event:.2f}",
                ]
            )
            calls: Counter[str] = Counter()
            for each in delayed:
                calls.update(each.calls)
            in_process = path != "server"
            expected = EXPECTED_CALLS[path]
            interceptor_total = sum(calls[method] for method in METHODS[:4])
            met = per_event == expected and (not in_process or interceptor_total == expected * events_seen)
            throughput = {
                network: statistics.median(run.load.throughput for run in chosen[network]) for network in NETWORKS
            }
            counted.rows.append(
                [
                    str(concurrency),
                    label,
                    str(events_seen),
                    f"{per_event:.2f}",
                    *((f"{calls[method] / events_seen:.2f}" if in_process else "-") for method in METHODS),
                    str(expected),
                    harness.verdict(met),
                    f"{throughput[NO_DELAY]:.0f}",
                    f"{throughput[DELAYED]:.0f}",
                ]
            )
            numbers[f"c{concurrency} {path}"] = {
                network: {
                    "p50_seconds": p50[network],
                    "p99_seconds": p99[network],
                    "throughputs": [run.load.throughput for run in chosen[network]],
                    "statuses": [run.load.statuses for run in chosen[network]],
                    "proxy_requests": [run.proxy_requests for run in chosen[network]],
                    "calls": [dict(run.calls) for run in chosen[network]],
                    "latencies": latencies[network],
                }
                for network in NETWORKS
            }
            good = "200" if path == "server" else "applied"
            for network, each_runs in chosen.items():
                for each in each_runs:
                    if each.load.statuses != {good: each.events}:
                        print(f"warning: C={concurrency} {path} {network}: outcomes {each.load.statuses}")
    harness.save("round_trip_delay", info, [network_table, latency, counted], numbers)


if __name__ == "__main__":
    main()

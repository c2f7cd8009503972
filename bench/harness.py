"""Shared benchmark plumbing: machine facts, a private emulator, function servers, signed events, tables.

Benchmarks import the test helpers (`tests/emulator.py`, `tests/clerk_events.py`) rather than copy them.
Every process started here runs in its own process group and is stopped by that group; ports are free
loopback ports; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import emulator  # noqa: E402  (tests/ is on the path only from here on)
from clerk_events import SECRET, deletion_event, new_message_id, signed_headers, user_event  # noqa: E402
from google.cloud import firestore  # noqa: E402

from clerk_sync import config, events  # noqa: E402
from clerk_sync.delivery import Delivery  # noqa: E402

__all__ = [
    "EMULATOR_GROUPS",
    "PROJECT",
    "ROOT",
    "SECRET",
    "LoadResult",
    "Server",
    "Table",
    "deletion_event",
    "group_cpu_seconds",
    "group_pids",
    "http_jobs",
    "load_rules",
    "machine",
    "new_message_id",
    "percentile",
    "post",
    "print_machine",
    "run_load",
    "running_emulator",
    "save",
    "server_environment",
    "signed_headers",
    "spawn_server",
    "stop_server",
    "user_event",
    "verdict",
    "wait_serving",
    "wipe",
]

PROJECT = "demo-clerk-sync-bench"
RESULTS = ROOT / "bench" / "results"
FUNCTION_SERVER = Path(sys.executable).with_name("functions-framework")
SERVE_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 20.0
PACKAGES = (
    "functions-framework",
    "gunicorn",
    "flask",
    "google-cloud-firestore",
    "grpcio",
    "protobuf",
    "svix",
    "firebase-admin",
    "clerk-backend-api",
)


def apply(client: firestore.Client, message_id: str, event: events.Event, deadline_seconds: float = 8.0) -> str:
    """Apply a parsed event exactly as the function does after verifying it."""
    assert not isinstance(event, events.IgnoredEvent)
    settings = config.read_settings()
    settings = type(settings)(**{**settings.__dict__, "firestore_deadline_seconds": deadline_seconds})
    return str(events.apply_event(client, event, Delivery(message_id=message_id, settings=settings)))


def machine() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, Python, package versions, date."""
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        total_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "memory": f"{total_kib / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "load": "load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min) at start".format(*os.getloadavg()),
        "python": platform.python_version(),
        "packages": ", ".join(f"{name} {version}" for name, version in versions.items()),
    }


def print_machine(info: dict[str, str]) -> None:
    for key, value in info.items():
        print(f"{key:>9}: {value}")
    print()


EMULATOR_GROUPS: dict[str, int] = {}  # emulator host -> its process group (gcloud and Java)


@contextmanager
def running_emulator() -> Iterator[str]:
    """A Firestore emulator of this benchmark's own, on a free port; stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as directory:
        process, host = emulator.start(None, Path(directory) / "emulator.log")
        EMULATOR_GROUPS[host] = process.pid
        try:
            yield host
        finally:
            EMULATOR_GROUPS.pop(host, None)
            emulator.stop(process)


def group_pids(group: int) -> list[int]:
    """Every live process whose process group is `group` (e.g. gunicorn master and worker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            pids.append(int(entry))
    return sorted(pids)


def group_cpu_seconds(group: int) -> float:
    """User + system CPU time the live processes of `group` have used so far."""
    ticks = 0
    for pid in group_pids(group):
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def wipe(host: str) -> None:
    emulator.wipe(host, PROJECT)


def load_rules(host: str, rules_text: str) -> None:
    """Replace the emulator's security rules for the benchmark project (its REST calls obey them)."""
    emulator.load_rules(host, PROJECT, rules_text)


def server_environment(host: str, threads: int) -> dict[str, str]:
    """The function's environment as deployed (K_SERVICE set: no .env), pointed at the emulator."""
    return {
        **os.environ,
        "CLERK_WEBHOOK_SIGNING_SECRET": SECRET,
        "WEBHOOK_SECRET": "",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": host,
        "THREADS": str(threads),
        "K_SERVICE": "clerk-webhook",
    }


@dataclass
class Server:
    """A functions-framework process group serving on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


def spawn_server(target: str, source: Path, environment: dict[str, str], log_path: Path) -> Server:
    """Start `functions-framework` in its own process group; returns at once (see wait_serving)."""
    port = emulator.free_port()
    command = [str(FUNCTION_SERVER), f"--target={target}", f"--source={source}", "--host=127.0.0.1", f"--port={port}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(process=process, port=port, log_path=log_path)


def wait_serving(server: Server, timeout: float = SERVE_TIMEOUT_SECONDS) -> None:
    """Wait until the server answers any HTTP request (a GET is a 405 here, no Firestore involved)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_tail()}")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.02)
        finally:
            connection.close()
    stop_server(server)
    raise RuntimeError(f"server did not answer within {timeout}s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    emulator.stop(server.process)


def post(connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> int:
    connection.request("POST", "/", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


@dataclass
class LoadResult:
    """Latencies (seconds) of one load run, its wall time and the statuses it got."""

    latencies: list[float]
    wall_seconds: float
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_seconds

    def row(self) -> list[str]:
        return [
            f"{percentile(self.latencies, 50) * 1000:.1f}",
            f"{percentile(self.latencies, 99) * 1000:.1f}",
            f"{self.throughput:.0f}",
        ]


def run_load(concurrency: int, jobs: Sequence[Callable[[], str]]) -> LoadResult:
    """Run `jobs` (each returns an outcome label) on `concurrency` threads; time each one and the whole."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    next_job = iter(range(len(jobs)))

    def worker() -> None:
        while True:
            with lock:
                index = next(next_job, None)
            if index is None:
                return
            started = time.perf_counter()
            outcome = jobs[index]()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[outcome] = statuses.get(outcome, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
        if thread.is_alive():
            raise RuntimeError("a load thread did not finish within 600 s")
    return LoadResult(latencies=latencies, wall_seconds=time.perf_counter() - started, statuses=statuses)


def http_jobs(port: int, requests: Sequence[tuple[bytes, dict[str, str]]]) -> list[Callable[[], str]]:
    """One job per request; each thread keeps one keep-alive connection, as Svix's senders do."""
    local = threading.local()

    def job_for(body: bytes, headers: dict[str, str]) -> Callable[[], str]:
        def job() -> str:
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = local.connection = http.client.HTTPConnection(
                    "127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS
                )
            try:
                return str(post(connection, body, headers))
            except (OSError, http.client.HTTPException):
                connection.close()
                local.connection = None
                return "connection error"

        return job

    return [job_for(body, headers) for body, headers in requests]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank), so p99 of 300 values is a value actually seen."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Table:
    """A plain-text (and Markdown) table with a title."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.columns)} |", f"|{'|'.join('---' for _ in self.columns)}|"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        widths = [max(len(cell) for cell in column) for column in zip(self.columns, *self.rows, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

        rule = "  ".join("-" * width for width in widths)
        return "\n".join([self.title, line(self.columns), rule, *(line(row) for row in self.rows)])


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def save(name: str, info: dict[str, str], tables: Sequence[Table], numbers: dict[str, object]) -> None:
    """Print the tables and keep them (and the raw numbers) under bench/results/ (gitignored).

    The load average at the end goes with them: other work on the machine moves the numbers.
    """
    info = {**info, "load at end": "load average {:.2f} {:.2f} {:.2f} (1, 5, 15 min)".format(*os.getloadavg())}
    for table in tables:
        print(table.text())
        print()
    print(f"{'load at end':>9}: {info['load at end']}")
    print()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, **numbers}, indent=2) + "\n")
    markdown = "\n\n".join(f"**{table.title}**\n\n{table.markdown()}" for table in tables)
    (RESULTS / f"{name}.md").write_text(markdown + f"\n\n{info['load at end']} at the end.\n")

"""Peak memory of the serving process group (gunicorn master + worker) under load at concurrency 32.

The function is served with THREADS=32 and 32 client threads post signed events. Per phase:
- footprint = the worker's peak RSS (VmHWM, reset per phase through /proc/PID/clear_refs) plus the
  master's private memory (USS): the pages the group holds, shared pages counted once. Target: < 128 MiB.
- for context, the group's total PSS and total RSS, sampled every 20 ms (RSS counts pages the worker
  shares with the master twice; PSS also splits shared libraries with unrelated processes).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import ROOT, Table

CONCURRENCY = 32
TYPICAL_EVENTS = 1500
LARGE_EVENTS = 96
LARGE_BODY_BYTES = 1000 * 1024  # just under the 1 MiB limit, padding in private_metadata (not stored)
SAMPLE_SECONDS = 0.02
TARGET_MIB = 128.0
KIB_PER_MIB = 1024
DEPLOYED_CONCURRENCY = 8  # `make deploy`'s default --concurrency (and THREADS)
RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets VmHWM to the current RSS


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup_kib(pid: int, *keys: str) -> int:
    """The sum of `keys` (e.g. Pss, Private_Dirty) from /proc/PID/smaps_rollup."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if name in keys:
                    total += int(rest.split()[0])
    except OSError:
        pass
    return total


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write(RESET_PEAK_RSS)


@dataclass
class Sampler:
    """Samples the group's total RSS and PSS until stopped; keeps the peaks."""

    group: int
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            pids = harness.group_pids(self.group)
            self.peak_rss_kib = max(self.peak_rss_kib, sum(status_kib(pid, "VmRSS") for pid in pids))
            self.peak_pss_kib = max(self.peak_pss_kib, sum(rollup_kib(pid, "Pss") for pid in pids))
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()


Phases = list[tuple[str, list[tuple[bytes, dict[str, str]]]]]


def typical_requests() -> list[tuple[bytes, dict[str, str]]]:
    bodies = [
        harness.user_event("user.created", f"user_mem{index}", emails=[f"mem{index}@example.com"])
        for index in range(TYPICAL_EVENTS)
    ]
    return [(body.encode(), harness.signed_headers(body)) for body in bodies]


def large_requests() -> list[tuple[bytes, dict[str, str]]]:
    requests = []
    for index in range(LARGE_EVENTS):
        bare = harness.user_event("user.created", f"user_big{index}", emails=[], private_metadata={"pad": ""})
        body = bare.replace('"pad": ""', '"pad": "' + "x" * (LARGE_BODY_BYTES - len(bare)) + '"')
        requests.append((body.encode(), harness.signed_headers(body)))
    return requests


def mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f}"


def unsigned(requests: list[tuple[bytes, dict[str, str]]]) -> list[tuple[bytes, dict[str, str]]]:
    """The same bodies with a signature that does not match: what anyone on the internet can send."""
    return [(body, {**headers, "svix-signature": "v1,AAAA"}) for body, headers in requests]


def measure(host: str, directory: Path, threads: int, phases: Phases, table: Table) -> dict[str, object]:
    """Serve with THREADS=threads, run each phase from `threads` clients, add a row per phase."""
    numbers: dict[str, object] = {}
    server = harness.spawn_server(
        "clerk_webhook",
        ROOT / "main.py",
        harness.server_environment(host, threads),
        directory / f"server-{threads}.log",
    )
    try:
        harness.wait_serving(server)
        master_pid = server.process.pid
        for name, requests in phases:
            pids = harness.group_pids(master_pid)
            reset_peaks(pids)
            sampler = Sampler(group=master_pid)
            thread = threading.Thread(target=sampler.run, daemon=True)
            thread.start()
            statuses: dict[str, int] = {}
            if requests:
                statuses = harness.run_load(threads, harness.http_jobs(server.port, requests)).statuses
            time.sleep(0.2)
            sampler.stop()
            thread.join(timeout=5)
            worker_peak = sum(status_kib(pid, "VmHWM") for pid in pids if pid != master_pid)
            master_private = rollup_kib(master_pid, "Private_Clean", "Private_Dirty")
            footprint = worker_peak + master_private
            judged = bool(requests)
            met = footprint / KIB_PER_MIB < TARGET_MIB
            table.rows.append(
                [
                    str(threads),
                    name,
                    str(len(requests)),
                    ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items())) or "-",
                    mib(worker_peak),
                    mib(master_private),
                    mib(footprint),
                    mib(sampler.peak_pss_kib),
                    mib(sampler.peak_rss_kib),
                    f"< {TARGET_MIB:.0f}" if judged else "",
                    harness.verdict(met) if judged else "",
                ]
            )
            numbers[f"threads {threads}: {name}"] = {
                "worker_peak_rss_kib": worker_peak,
                "master_private_kib": master_private,
                "footprint_kib": footprint,
                "sampled_peak_pss_kib": sampler.peak_pss_kib,
                "sampled_peak_rss_kib": sampler.peak_rss_kib,
                "samples": sampler.samples,
                "statuses": statuses,
                "target_met": met if judged else None,
            }
    finally:
        harness.stop_server(server)
    return numbers


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        "Memory of the serving process group (gunicorn master + 1 worker), C clients on THREADS=C; MiB",
        [
            "C",
            "phase",
            "requests",
            "statuses",
            "worker peak RSS",
            "master private",
            "footprint",
            "sampled PSS total",
            "sampled RSS total",
            "target",
            "result",
        ],
    )
    large = large_requests()
    numbers: dict[str, object] = {}
    with harness.running_emulator() as host, tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        numbers |= measure(
            host,
            Path(directory),
            CONCURRENCY,
            [
                ("idle (after one GET)", []),
                ("typical signed events (~2.5 KB)", typical_requests()),
                ("near-limit bodies (1000 KiB), bad signature", unsigned(large)),
                ("near-limit bodies (1000 KiB), signed", large),
            ],
            table,
        )
        harness.wipe(host)
        numbers |= measure(
            host,
            Path(directory),
            DEPLOYED_CONCURRENCY,
            [
                ("near-limit bodies (1000 KiB), bad signature", unsigned(large)),
                (
                    "near-limit bodies (1000 KiB), signed",
                    [(body, harness.signed_headers(body.decode())) for body, _ in large],
                ),
            ],
            table,
        )
    harness.save("memory", info, [table], numbers)


if __name__ == "__main__":
    main()

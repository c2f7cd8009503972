"""Peak memory of the serving process group (gunicorn master + worker), the worst cases included.

The function is served as deployed (gunicorn, one worker) with THREADS=C, and C client threads send
each phase's requests, for C = 32 and the deployed 8. Every run gets a server of its own, warmed
with a few ordinary events: the peaks of one phase (and what glibc keeps of them) never count in the
next. The near-limit phases run REPEATS times, interleaved: how many large requests overlap depends
on the threads' timing, so the median run is shown and the worst one judged. Per run:
- footprint = the worker's peak RSS (VmHWM, reset at the phase's start through /proc/PID/clear_refs)
  plus the master's private memory (USS): the pages the group holds, shared pages counted once.
  Target: < 128 MiB.
- for context, the worker's RSS when the phase starts, and the group's total PSS and total RSS,
  sampled every 20 ms (RSS counts pages the worker shares with the master twice; PSS also splits
  shared libraries with unrelated processes).
Phases: ordinary signed events; bodies of 1000 KiB (just under the 1 MiB limit), all ASCII or with a
single astral character at the end of the padding (a decoded `str` holding one takes 4 bytes per
character), with a bad signature (what anyone can send) and signed (they get parsed); 50 MiB declared
with PUT, GET, DELETE and as POST /robots.txt, of which 1 KiB is sent: they must be answered without
being read.
A second table is an experiment, not the deployed code: the signed emoji case through
`bench/parse_gate_app.py`, which counts the large parses in progress at once and can let only one run
at a time, with and without glibc's mmap threshold fixed at its 128 KiB default (GLIBC_TUNABLES).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import ROOT, Table

REPEATS = int(os.environ.get("BENCH_MEMORY_REPEATS", "3"))  # servers per near-limit phase, interleaved
THREAD_COUNTS = (32, 8)  # 8: `make deploy`'s default --concurrency (and THREADS)
WARM_UP_EVENTS = 16
TYPICAL_EVENTS = 1500
LARGE_EVENTS = 96
LARGE_BODY_BYTES = 1000 * 1024  # just under the 1 MiB limit, padding in private_metadata (not stored)
ASTRAL = "\N{GRINNING FACE}"  # U+1F600: 4 bytes in UTF-8, and 4 per character in any str holding it
DECLARED_BYTES = 50 * 1024 * 1024
SLIVER = b"x" * 1024
HUGE_PER_KIND = 32
HUGE_KINDS = (("PUT", "/", 405), ("GET", "/", 405), ("DELETE", "/any/path", 405), ("POST", "/robots.txt", 404))
ANSWER_TIMEOUT_SECONDS = 5.0
SAMPLE_SECONDS = 0.02
TARGET_MIB = 128.0
KIB_PER_MIB = 1024
RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets VmHWM to the current RSS
OVERLAP_LINE = re.compile(r"large parses at once: ([0-9]+)")  # each new maximum, from bench/parse_gate_app.py


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


Requests = list[tuple[bytes, dict[str, str]]]


@dataclass
class Phase:
    """What one phase sends: signed or unsigned POSTs to /, or raw requests that declare a huge body."""

    name: str
    requests: Callable[[], Requests] = list
    huge: bool = False  # HUGE_KINDS over raw sockets instead of `requests`
    repeats: int = 1  # servers measured; the worst case varies from run to run with the threads' timing


def typical_requests(count: int = TYPICAL_EVENTS) -> Requests:
    """Signed user.created bodies for `count` new users, each with an email of its own."""
    tag = time.time_ns()
    bodies = [
        harness.user_event("user.created", f"user_mem{tag}x{index}", emails=[f"mem{tag}x{index}@example.com"])
        for index in range(count)
    ]
    return [(body.encode(), harness.signed_headers(body)) for body in bodies]


def warm_up_requests() -> Requests:
    return typical_requests(WARM_UP_EVENTS)


def large_bodies(astral: bool) -> list[str]:
    """user.created bodies of exactly LARGE_BODY_BYTES in UTF-8; `astral`: one U+1F600 ends the padding."""
    bodies = []
    tail = ASTRAL if astral else ""
    for index in range(LARGE_EVENTS):
        user_id = f"user_big{time.time_ns()}x{index}"
        bare = harness.user_event("user.created", user_id, emails=[], private_metadata={"pad": ""})
        filler = "x" * (LARGE_BODY_BYTES - len(bare.encode()) - len(tail.encode()))
        body = bare.replace('"pad": ""', f'"pad": "{filler}{tail}"')
        assert len(body.encode()) == LARGE_BODY_BYTES
        bodies.append(body)
    return bodies


def large_requests(*, astral: bool, signed: bool) -> Requests:
    requests = [(body.encode(), harness.signed_headers(body)) for body in large_bodies(astral)]
    if signed:
        return requests
    # The same bodies with a signature that does not match: what anyone on the internet can send.
    return [(body, {**headers, "svix-signature": "v1,AAAA"}) for body, headers in requests]


PHASES = (
    Phase("idle (after the warm-up)"),
    Phase(f"typical signed events (~2.5 KB) x{TYPICAL_EVENTS}", typical_requests),
    Phase(f"50 MiB declared, 1 KiB sent: PUT, GET, DELETE, POST /robots.txt x{HUGE_PER_KIND} each", huge=True),
    Phase("1000 KiB ASCII, bad signature", lambda: large_requests(astral=False, signed=False), repeats=REPEATS),
    Phase("1000 KiB with 1 emoji, bad signature", lambda: large_requests(astral=True, signed=False), repeats=REPEATS),
    Phase("1000 KiB ASCII, signed", lambda: large_requests(astral=False, signed=True), repeats=REPEATS),
    Phase("1000 KiB with 1 emoji, signed", lambda: large_requests(astral=True, signed=True), repeats=REPEATS),
)


def huge_request(port: int, method: str, path: str) -> str:
    """Declare DECLARED_BYTES, send a sliver, read the answer (bounded): "METHOD path status"."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {DECLARED_BYTES}\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS) as connection:
        connection.sendall(head.encode() + SLIVER)
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        try:
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError as error:  # a timeout: it waited for the body
            return f"{method} {path} {type(error).__name__}"
    status_line = received.partition(b"\r\n")[0].decode("latin-1").split()
    return f"{method} {path} {status_line[1] if len(status_line) > 1 else 'no answer'}"


def huge_jobs(port: int) -> list[Callable[[], str]]:
    def job_for(method: str, path: str) -> Callable[[], str]:
        return lambda: huge_request(port, method, path)

    return [job_for(method, path) for _ in range(HUGE_PER_KIND) for method, path, _status in HUGE_KINDS]


def mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f}"


def expected_statuses(phase: Phase, count: int) -> dict[str, int]:
    if phase.huge:
        return {f"{method} {path} {status}": HUGE_PER_KIND for method, path, status in HUGE_KINDS}
    if not count:
        return {}
    return {"401" if "bad signature" in phase.name else "200": count}


@dataclass
class Serving:
    """What serves a phase: the function as deployed, or the parse-gate experiment around it."""

    label: str
    source: Path = ROOT / "main.py"
    environment: dict[str, str] = field(default_factory=dict)


DEPLOYED = Serving("main.py")


FIXED_MMAP_THRESHOLD = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}  # glibc's default, but fixed


def experiment(slots: int, *, fixed_mmap_threshold: bool) -> Serving:
    """main.py through bench/parse_gate_app.py: large parses counted, at most `slots` at once (0: no gate);
    with `fixed_mmap_threshold`, glibc's malloc hands every block over 128 KiB back to the system when freed
    (by default the threshold rises to the largest block freed, so such blocks stay in the heap)."""
    parts = ["parse gate of 1" if slots else "no gate (counted only)"]
    if fixed_mmap_threshold:
        parts.append("mmap threshold fixed at 128 KiB")
    return Serving(
        ", ".join(parts),
        ROOT / "bench" / "parse_gate_app.py",
        {
            "PYTHONPATH": str(ROOT),
            "PARSE_GATE_SLOTS": str(slots),
            **(FIXED_MMAP_THRESHOLD if fixed_mmap_threshold else {}),
        },
    )


@dataclass
class Measured:
    """One phase on one server: memory, statuses, latencies and (experiment) the parses at once."""

    threads: int
    phase: Phase
    requests: int
    statuses: dict[str, int]
    latencies: list[float]
    worker_before_kib: int
    worker_peak_kib: int
    master_private_kib: int
    sampled_peak_pss_kib: int
    sampled_peak_rss_kib: int
    samples: int
    large_parses_at_once: int | None

    @property
    def footprint_kib(self) -> int:
        return self.worker_peak_kib + self.master_private_kib

    @property
    def met(self) -> bool:
        return self.footprint_kib / KIB_PER_MIB < TARGET_MIB

    @property
    def answered_as_expected(self) -> bool:
        return self.statuses == expected_statuses(self.phase, self.requests)

    def shown_statuses(self) -> str:
        if self.phase.huge and self.answered_as_expected:
            return ", ".join(f"{status} x{HUGE_PER_KIND}" for _, _, status in HUGE_KINDS)
        shown = ", ".join(f"{status} x{count}" for status, count in sorted(self.statuses.items())) or "-"
        return shown if self.answered_as_expected else f"UNEXPECTED {shown}"

    def numbers(self) -> dict[str, object]:
        return {
            **{key: value for key, value in vars(self).items() if key != "phase"},
            "footprint_kib": self.footprint_kib,
            "answered_as_expected": self.answered_as_expected,
            "target_met": self.met if self.requests else None,
        }


def measure(host: str, directory: Path, threads: int, phase: Phase, serving: Serving = DEPLOYED) -> Measured:
    """Serve with THREADS=threads, warm up, send the phase from `threads` clients; stop the server."""
    log_path = directory / f"server-{time.time_ns()}.log"
    server = harness.spawn_server(
        "clerk_webhook", serving.source, {**harness.server_environment(host, threads), **serving.environment}, log_path
    )
    try:
        harness.wait_serving(server)
        harness.run_load(threads, harness.http_jobs(server.port, warm_up_requests()))
        requests = phase.requests()  # built (and signed) now: fresh timestamps
        jobs = huge_jobs(server.port) if phase.huge else harness.http_jobs(server.port, requests)
        time.sleep(0.2)
        master_pid = server.process.pid
        pids = harness.group_pids(master_pid)
        workers = [pid for pid in pids if pid != master_pid]
        reset_peaks(pids)
        worker_before = sum(status_kib(pid, "VmRSS") for pid in workers)
        sampler = Sampler(group=master_pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        load = harness.run_load(threads, jobs) if jobs else None
        time.sleep(0.2)
        sampler.stop()
        thread.join(timeout=5)
        worker_peak = sum(status_kib(pid, "VmHWM") for pid in workers)
        master_private = rollup_kib(master_pid, "Private_Clean", "Private_Dirty")
    finally:
        harness.stop_server(server)
    overlaps = [int(count) for count in OVERLAP_LINE.findall(log_path.read_text(errors="replace"))]
    return Measured(
        threads=threads,
        phase=phase,
        requests=len(jobs),
        statuses=load.statuses if load else {},
        latencies=load.latencies if load else [],
        worker_before_kib=worker_before,
        worker_peak_kib=worker_peak,
        master_private_kib=master_private,
        sampled_peak_pss_kib=sampler.peak_pss_kib,
        sampled_peak_rss_kib=sampler.peak_rss_kib,
        samples=sampler.samples,
        large_parses_at_once=max(overlaps, default=0) if serving is not DEPLOYED else None,
    )


EXPERIMENT_PHASE = PHASES[-1]  # signed, 1000 KiB + 1 emoji: the worst case
EXPERIMENTS = tuple(experiment(slots, fixed_mmap_threshold=fixed) for fixed in (False, True) for slots in (0, 1))


def summary(results: list[Measured]) -> tuple[Measured, str]:
    """The run with the median footprint, and the footprints' range over all runs."""
    ordered = sorted(results, key=lambda each: each.footprint_kib)
    low, high = ordered[0].footprint_kib, ordered[-1].footprint_kib
    return ordered[(len(ordered) - 1) // 2], f"{mib(low)}-{mib(high)} ({len(ordered)})" if len(ordered) > 1 else "-"


def statuses_of(runs: list[Measured]) -> str:
    """The statuses all runs got, or the first run's that got something else."""
    return next((each for each in runs if not each.answered_as_expected), runs[0]).shown_statuses()


def worst_met(results: list[Measured]) -> bool:
    return all(each.met for each in results)


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        "Memory of the serving process group (gunicorn master + 1 worker), C clients on THREADS=C, "
        f"a fresh warmed server per run, near-limit phases {REPEATS} runs interleaved (median run shown, "
        "judged on the worst); MiB",
        [
            "C",
            "phase",
            "requests",
            "statuses",
            "worker RSS at start",
            "worker peak RSS",
            "master private",
            "footprint",
            "footprint min-max (runs)",
            "sampled PSS total",
            "sampled RSS total",
            "target",
            "result",
        ],
    )
    experiment = Table(
        f"Experiment, not the deployed code (bench/parse_gate_app.py): {EXPERIMENT_PHASE.name}; large parses "
        f"counted, then one at a time; glibc's mmap threshold fixed ({REPEATS} runs each, median shown); MiB, ms",
        [
            "C",
            "served",
            "large parses at once (max)",
            "statuses",
            "worker peak RSS",
            "footprint",
            "footprint min-max (runs)",
            "target",
            "result",
            "p50 ms",
            "p99 ms",
        ],
    )
    results: dict[tuple[int, str], list[Measured]] = {}
    experiments: dict[tuple[int, str], list[Measured]] = {}
    with harness.running_emulator() as host, tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:

        def run(threads: int, phase: Phase, serving: Serving = DEPLOYED) -> Measured:
            harness.wipe(host)
            return measure(host, Path(directory), threads, phase, serving)

        for repeat in range(REPEATS):  # interleaved, so drift in the machine's load hits every phase alike
            for threads in THREAD_COUNTS:
                for phase in PHASES:
                    if repeat < phase.repeats:
                        results.setdefault((threads, phase.name), []).append(run(threads, phase))
                for serving in EXPERIMENTS:
                    experiments.setdefault((threads, serving.label), []).append(run(threads, EXPERIMENT_PHASE, serving))
    numbers: dict[str, object] = {}
    for threads in THREAD_COUNTS:
        for phase in PHASES:
            runs = results[(threads, phase.name)]
            shown, spread = summary(runs)
            numbers[f"threads {threads}: {phase.name}"] = [each.numbers() for each in runs]
            judged = bool(shown.requests)
            table.rows.append(
                [
                    str(threads),
                    phase.name,
                    str(shown.requests),
                    statuses_of(runs),
                    mib(shown.worker_before_kib),
                    mib(shown.worker_peak_kib),
                    mib(shown.master_private_kib),
                    mib(shown.footprint_kib),
                    spread,
                    mib(shown.sampled_peak_pss_kib),
                    mib(shown.sampled_peak_rss_kib),
                    f"< {TARGET_MIB:.0f}" if judged else "",
                    harness.verdict(worst_met(runs)) if judged else "",
                ]
            )
    for threads in THREAD_COUNTS:
        for serving in EXPERIMENTS:
            runs = experiments[(threads, serving.label)]
            shown, spread = summary(runs)
            latencies = [latency for each in runs for latency in each.latencies]
            numbers[f"experiment, threads {threads}: {serving.label}"] = [each.numbers() for each in runs]
            experiment.rows.append(
                [
                    str(threads),
                    serving.label,
                    str(max(each.large_parses_at_once or 0 for each in runs)),
                    statuses_of(runs),
                    mib(shown.worker_peak_kib),
                    mib(shown.footprint_kib),
                    spread,
                    f"< {TARGET_MIB:.0f}",
                    harness.verdict(worst_met(runs)),
                    f"{harness.percentile(latencies, 50) * 1000:.0f}",
                    f"{harness.percentile(latencies, 99) * 1000:.0f}",
                ]
            )
    harness.save("memory", info, [table, experiment], numbers)


if __name__ == "__main__":
    main()

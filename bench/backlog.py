"""A backlog replay: 20,000 mixed events delivered as Svix replays a backlog, through the real server.

The delivery simulator's history (users, organizations, memberships; email moves, deletions, ties,
a bulk import) is delivered with 10 % duplicates, shuffled within a window, at C concurrent requests
to one functions-framework server (THREADS = C) on the emulator, every failed attempt retried on
Svix's schedule squeezed into milliseconds. Then Firestore is compared with Clerk's final state,
exactly, by the simulator's own check. The emulator does not model Firestore's hotspots; see
docs/scale.md for what production adds.

    .venv/bin/python bench/backlog.py [EVENTS] [C ...]      # defaults: 20000 events, C = 32 and 64
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from google.cloud import firestore
from harness import Table

# isort: split
import delivery_sim  # tests/ is on the path from `import harness` on

SEED = 20_000
USERS_PER_EVENT = 1 / 25  # 800 users for 20,000 events, as the soak histories have
WINDOW = 32


def replay(host: str, events_target: int, concurrency: int, scratch: Path) -> dict[str, Any]:
    """Generate, deliver and check one backlog at `concurrency`; the figures of the run."""
    harness.wipe(host)
    history = delivery_sim.generate(
        SEED, users=max(40, int(events_target * USERS_PER_EVENT)), events_target=events_target, bulk_members=300
    )
    rng = random.Random(f"{SEED}-delivery-{concurrency}")
    deliveries = delivery_sim.plan(
        history.events, rng, duplicate_share=0.1, window=WINDOW, stragglers=history.stragglers
    )
    server = harness.spawn_server(
        "clerk_webhook",
        harness.ROOT / "main.py",
        harness.server_environment(host, concurrency),
        scratch / f"server-{concurrency}.log",
    )
    try:
        harness.wait_serving(server)
        cpu_before = harness.group_cpu_seconds(server.process.pid)
        report = delivery_sim.deliver(
            f"http://127.0.0.1:{server.port}/",
            deliveries,
            rng=rng,
            concurrency=concurrency,
            wall_seconds=max(600.0, events_target / 5),
        )
        cpu = harness.group_cpu_seconds(server.process.pid) - cpu_before
        log_text = server.log_path.read_text(errors="replace")
    finally:
        harness.stop_server(server)
    db = firestore.Client(project=harness.PROJECT)
    problems = delivery_sim.final_state_problems(db, history, report.attempts, log_text)
    statuses = report.statuses()
    latencies = [attempt.seconds * 1000 for attempt in report.attempts]
    events = len({delivery.event.svix_id for delivery in deliveries})
    return {
        "concurrency": concurrency,
        "events": events,
        "deliveries": len(deliveries),
        "attempts": len(report.attempts),
        "wall_seconds": report.wall_seconds,
        "events_per_second": events / report.wall_seconds,
        "attempts_per_second": len(report.attempts) / report.wall_seconds,
        "p50_ms": harness.percentile(latencies, 50),
        "p99_ms": harness.percentile(latencies, 99),
        "status_5xx": sum(count for status, count in statuses.items() if status is not None and status >= 500),
        "status_409": statuses[409],
        "no_answer": statuses[None],
        "undelivered": len(report.undelivered),
        "function_cpu_ms_per_attempt": cpu * 1000 / max(1, len(report.attempts)),
        "exact": not problems and not report.undelivered,
        "problems": problems[:10],
    }


def main() -> None:
    events_target = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    levels = [int(argument) for argument in sys.argv[2:]] or [32, 64]
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        f"Backlog replay: {events_target:,} mixed events (seed {SEED}), 10 % duplicates, shuffled within "
        f"{WINDOW}, Svix-style retries; one server, THREADS = C, on the emulator",
        [
            "C",
            "events",
            "deliveries",
            "attempts",
            "wall s",
            "events/s",
            "p50 ms",
            "p99 ms",
            "5xx",
            "409",
            "no answer",
            "function CPU ms / attempt",
            "final state",
        ],
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="clerk-sync-backlog-") as scratch, harness.running_emulator() as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        for concurrency in levels:
            started = time.monotonic()
            run = replay(host, events_target, concurrency, Path(scratch))
            print(
                f"C={concurrency}: {time.monotonic() - started:.0f} s with generation and the final check", flush=True
            )
            runs.append(run)
            table.rows.append([
                str(concurrency),
                f"{run['events']:,}",
                f"{run['deliveries']:,}",
                f"{run['attempts']:,}",
                f"{run['wall_seconds']:.1f}",
                f"{run['events_per_second']:.0f}",
                f"{run['p50_ms']:.1f}",
                f"{run['p99_ms']:.1f}",
                str(run["status_5xx"]),
                str(run["status_409"]),
                str(run["no_answer"]),
                f"{run['function_cpu_ms_per_attempt']:.2f}",
                "exact" if run["exact"] else f"DIFFERS: {run['problems'][:2]}",
            ])  # fmt: skip
    harness.save("backlog", info, [table], {"runs": runs})
    if not all(run["exact"] for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()

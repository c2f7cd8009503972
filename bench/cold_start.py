"""Cold start: process start to the first 2xx, for the function and for floor programs, same run.

The function (`main.py:clerk_webhook`) answers a signed user.created; the floor (`bench/floor_app.py`)
imports only functions_framework and google.cloud.firestore and does one write; the library floor
(`bench/transactional_floor_app.py`) stores the user with `@firestore.transactional` (3 RPCs), for
context. Each is spawned RUNS times, alternating, and polled until its first 2xx. Target (issue 20):
function within 5% of the floor. Import times of the pieces are measured in fresh processes.

Every program runs from compiled bytecode: pip compiles the dependencies when it installs them,
so the project's own modules are compiled first too (`compileall`, into the git-ignored
`__pycache__`); otherwise a machine with PYTHONDONTWRITEBYTECODE set compiles them at every start.
"""

from __future__ import annotations

import compileall
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness
from harness import ROOT, Server, Table

RUNS = int(os.environ.get("BENCH_COLD_RUNS", "7"))
IMPORT_RUNS = 5
FIRST_ANSWER_TIMEOUT_SECONDS = 60.0
TARGET_RATIO = 1.05
IMPORTS = {
    "main (the whole function module)": "main",
    "functions_framework": "functions_framework",
    "google.cloud.firestore": "google.cloud.firestore",
    "clerk_sync.signature (the verifier: hmac over the raw body)": "clerk_sync.signature",
    "svix.webhooks (not used by the function)": "svix.webhooks",
    "firebase_admin + jwt (firebase_token; the webhook: bans, deletions)": "firebase_admin.auth, jwt",
    "clerk_backend_api (clerk_reconcile only, never the webhook)": "clerk_backend_api",
}


def function_request() -> tuple[bytes, dict[str, str]]:
    body = harness.user_event("user.created", f"user_cold{time.time_ns()}", emails=[])
    return body.encode(), harness.signed_headers(body)


def floor_request() -> tuple[bytes, dict[str, str]]:
    return b"{}", {"content-type": "application/json"}


def first_success(
    target: str, source: Path, environment: dict[str, str], request: Callable[[], tuple[bytes, dict[str, str]]]
) -> float:
    """Seconds from spawning the server to its first 2xx; raises on a non-2xx answer or a timeout."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as directory:
        started = time.perf_counter()
        server: Server = harness.spawn_server(target, source, environment, Path(directory) / "server.log")
        try:
            while time.perf_counter() - started < FIRST_ANSWER_TIMEOUT_SECONDS:
                if server.process.poll() is not None:
                    raise RuntimeError(f"{target} exited:\n{server.log_tail()}")
                body, headers = request()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
                try:
                    status = harness.post(connection, body, headers)
                except ConnectionRefusedError:
                    time.sleep(0.005)
                    continue
                finally:
                    connection.close()
                if 200 <= status < 300:
                    return time.perf_counter() - started
                raise RuntimeError(f"{target} answered {status} first:\n{server.log_tail()}")
            raise RuntimeError(f"{target} gave no 2xx within {FIRST_ANSWER_TIMEOUT_SECONDS}s")
        finally:
            harness.stop_server(server)


def import_seconds(module: str, environment: dict[str, str]) -> float:
    """Median time to import `module` in a fresh interpreter (cwd is the project, as when serving)."""
    code = f"import time; s = time.perf_counter(); import {module}; print(time.perf_counter() - s)"
    samples = []
    for _ in range(IMPORT_RUNS):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        samples.append(float(result.stdout.strip()))
    return statistics.median(samples)


def library_request() -> tuple[bytes, dict[str, str]]:
    body = harness.user_event("user.created", f"user_cold{time.time_ns()}", emails=[])
    return body.encode(), {"content-type": "application/json"}


def precompile() -> None:
    """Bytecode for the project's own modules, as the dependencies have theirs."""
    for path in (ROOT / "main.py", ROOT / "bench" / "floor_app.py", ROOT / "bench" / "transactional_floor_app.py"):
        compileall.compile_file(path, quiet=1)
    compileall.compile_dir(ROOT / "clerk_sync", quiet=1)


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    precompile()
    with harness.running_emulator() as host:
        environment = harness.server_environment(host, threads=8)
        function_runs: list[float] = []
        floor_runs: list[float] = []
        library_runs: list[float] = []
        for _ in range(RUNS):  # alternate, so drift on the machine hits all alike
            floor_runs.append(first_success("floor", ROOT / "bench" / "floor_app.py", environment, floor_request))
            function_runs.append(first_success("clerk_webhook", ROOT / "main.py", environment, function_request))
            library_runs.append(
                first_success(
                    "transactional_floor", ROOT / "bench" / "transactional_floor_app.py", environment, library_request
                )
            )
    imports = {label: import_seconds(module, environment) for label, module in IMPORTS.items()}

    floor_median = statistics.median(floor_runs)
    function_median = statistics.median(function_runs)
    ratio = function_median / floor_median
    met = ratio <= TARGET_RATIO
    cold = Table(
        f"Cold start: process start to first 2xx (median of {RUNS}, alternating runs)",
        ["program", "median s", "min s", "max s", "ratio to floor", "target", "result"],
    )
    cold.rows.append(
        ["floor (ff + firestore, one write)", *(f"{value:.3f}" for value in _spread(floor_runs)), "1.00", "", ""]
    )
    cold.rows.append(
        [
            "library floor (@firestore.transactional, 3 RPCs)",
            *(f"{value:.3f}" for value in _spread(library_runs)),
            f"{statistics.median(library_runs) / floor_median:.3f}",
            "",
            "",
        ]
    )
    cold.rows.append(
        [
            "clerk_webhook (signed user.created)",
            *(f"{value:.3f}" for value in _spread(function_runs)),
            f"{ratio:.3f}",
            f"<= {TARGET_RATIO:.2f}",
            harness.verdict(met),
        ]
    )
    imported = Table(f"Import time in a fresh interpreter (median of {IMPORT_RUNS})", ["module", "ms", "ratio to main"])
    for label, seconds in imports.items():
        imported.rows.append([label, f"{seconds * 1000:.0f}", f"{seconds / imports[next(iter(IMPORTS))]:.2f}"])
    harness.save(
        "cold_start",
        info,
        [cold, imported],
        {
            "floor_seconds": floor_runs,
            "library_floor_seconds": library_runs,
            "function_seconds": function_runs,
            "ratio": ratio,
            "target_met": met,
            "import_seconds": imports,
        },
    )


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


if __name__ == "__main__":
    main()

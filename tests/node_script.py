"""A Node script of the app's side (tests/js/*.mjs) run by tsx while the test talks to it: JSON lines out, lines in."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import emulator
from conftest import ROOT, TSX

__all__ = ["read_json_line", "say", "start", "stop"]


def start(script: str, environment: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`tsx tests/js/SCRIPT` in its own process group, its stdin and stdout piped to the test."""
    return subprocess.Popen(
        [str(TSX), str(ROOT / "tests" / "js" / script)],
        cwd=cwd, env={**os.environ, **environment}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def read_json_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line the script prints (other output is skipped), within `timeout` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    process.kill()
    raise AssertionError(f"no JSON line from the app in {timeout} s: {process.communicate(timeout=10)[1][-3000:]}")


def say(process: subprocess.Popen[str], line: str) -> None:
    """One line to the script's stdin."""
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def stop(process: subprocess.Popen[str]) -> None:
    """The script's whole process group, stopped."""
    emulator.stop(process)  # type: ignore[arg-type]

"""Processes in the foreground: each in its own process group, its output prefixed, all stopped together.

A process group per child means stopping one stops everything it started (gcloud's Java emulator,
gunicorn's workers, firebase-tools), and a Ctrl-C in the terminal reaches only the parent, which
decides the order. Output that can no longer be written stops the loop instead of raising.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

__all__ = [
    "Child",
    "Console",
    "emulator_line",
    "free_port",
    "port_taken",
    "readable",
    "start",
    "stop_all",
    "wait_until",
]

STOP_TIMEOUT_SECONDS = 10.0
EMULATOR_CHATTER = re.compile(r"HttpVersionRoutingHandler channelRead|INFO: Detected (non-)?HTTP/2 connection")
Transform = Callable[[str], str | None]


def port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port` (or on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A port nothing listens on now (for firebase-tools' hub and logging ports, which nobody types)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Child:
    """One foreground process with a log prefix, and what to call it in messages."""

    name: str
    title: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread | None = field(default=None)


class Console:
    """Prefixed, line-at-a-time output shared by the log pumps and the banner.

    Output that can no longer be written (the pipe to `tee` closed, the terminal went away) is
    not an error to raise in some log pump: it sets `closed`, which stops the loop like Ctrl-C.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.closed = threading.Event()
        try:
            colour = out.isatty() and not os.environ.get("NO_COLOR")
        except (OSError, ValueError):
            colour = False
        self.colours = (
            {"firestore": "\033[36m", "webhook": "\033[35m", "auth": "\033[33m", "token": "\033[32m", "dev": "\033[1m"}
            if colour
            else {}
        )
        self.reset = "\033[0m" if colour else ""

    def line(self, source: str, text: str) -> None:
        tag = f"{self.colours.get(source, '')}{source:>9} |{self.reset}"
        self.block(f"{tag} {text}\n")

    def block(self, text: str) -> None:
        if self.closed.is_set():
            return
        with self.lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):  # EPIPE, EIO, or a stream already closed
                self.closed.set()


def readable(line: str) -> str | None:
    """The function's JSON log line as one short human line; anything else unchanged."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "severity" not in entry or "message" not in entry:
        return line
    severity, message = str(entry.pop("severity")), str(entry.pop("message"))
    latency = entry.pop("latency_ms", None)
    status = entry.pop("status", "")
    for key in ("event_type", "outcome"):
        if str(entry.get(key)) in message:
            del entry[key]
    rest = " ".join(f"{key}={value}" for key, value in entry.items() if value is not None)
    timing = f" ({latency} ms)" if latency is not None else ""
    return f"{severity:<7} {status} {message}  {rest}{timing}".rstrip()


def emulator_line(line: str) -> str | None:
    """The emulator's line, minus its two-line notice for every client connection."""
    return None if EMULATOR_CHATTER.search(line) else line


def _pump(console: Console, name: str, stream: IO[bytes], transform: Callable[[str], str | None]) -> None:
    for raw in iter(stream.readline, b""):
        shown = transform(raw.decode(errors="replace").rstrip("\r\n"))
        if shown is not None:
            console.line(name, shown)
    stream.close()


def start(
    console: Console,
    name: str,
    title: str,
    command: list[str],
    environment: dict[str, str],
    cwd: Path,
    transform: Transform,
) -> Child:
    """Start `command` in a process group of its own, its output pumped to `console` as `name |`."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    pump = threading.Thread(target=_pump, args=(console, name, process.stdout, transform), daemon=True)
    pump.start()
    return Child(name=name, title=title, process=process, pump=pump)


def stop_all(children: list[Child]) -> None:
    """SIGTERM to every child's process group at once, SIGKILL to what lingers; never waits unbounded."""
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(timeout=STOP_TIMEOUT_SECONDS)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Members that outlived the leader (a Java child, a worker) go too.
            os.killpg(child.process.pid, signal.SIGKILL)
        if child.pump is not None:
            child.pump.join(timeout=2.0)


def wait_until(
    ready: Callable[[], bool], child: Child, timeout: float, stop: threading.Event, console: Console
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if ready():
            return True
        if child.process.poll() is not None:
            code = child.process.returncode
            console.line("dev", f"{child.title} exited (code {code}) before answering; see its log above")
            return False
        stop.wait(0.25)
    if not stop.is_set():
        console.line("dev", f"{child.title} did not answer within {timeout:.0f} s; see its log above")
    return False

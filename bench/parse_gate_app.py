"""An experiment for memory.py, not the deployed code: main.py with large bodies' parses counted or gated.

`json.loads` of bytes decodes the whole body to a `str` first (4 bytes per character once one astral
character is in it) and builds the parsed strings beside it. Concurrent requests can each hold such
copies at once: the GIL passes between threads inside `parse_event`. This module serves
`main.clerk_webhook` unchanged except that `events.parse_event` of a body of GATED_BYTES or more
- counts how many such parses are in progress at once, and prints each new maximum to stderr
  (`large parses at once: N`), and
- with PARSE_GATE_SLOTS > 0 waits for a semaphore of that many slots first (0: no gate, count only),
so memory.py can show the overlap and measure what bounding it would save. Small (ordinary) bodies
never wait and are not counted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import main
from clerk_sync import events

GATED_BYTES = 64 * 1024
PARSE_GATE_SLOTS = int(os.environ.get("PARSE_GATE_SLOTS", "0"))
OVERLAP_LINE = "large parses at once: "

_gate = threading.BoundedSemaphore(PARSE_GATE_SLOTS) if PARSE_GATE_SLOTS > 0 else None
_parse_event = events.parse_event
_lock = threading.Lock()
_in_progress = 0
_most = 0


def _enter() -> None:
    global _in_progress, _most
    with _lock:
        _in_progress += 1
        if _in_progress > _most:
            _most = _in_progress
            print(f"{OVERLAP_LINE}{_most}", file=sys.stderr, flush=True)


def _leave() -> None:
    global _in_progress
    with _lock:
        _in_progress -= 1


def parse_event_counted(body: bytes) -> events.Event:
    """`events.parse_event`; for a large body counted, and gated when PARSE_GATE_SLOTS > 0."""
    if len(body) < GATED_BYTES:
        return _parse_event(body)
    with _gate if _gate is not None else contextlib.nullcontext():
        _enter()
        try:
            return _parse_event(body)
        finally:
            _leave()


events.parse_event = parse_event_counted
clerk_webhook = main.clerk_webhook

"""A loopback TCP proxy that holds every chunk for a fixed time in each direction (for round_trip_delay.py).

    python bench/delay_proxy.py --upstream 127.0.0.1:PORT --delay-ms 5 --delay-ms 0 --max-seconds 1800

One listener per `--delay-ms`, each on a free 127.0.0.1 port the OS picks; the first stdout line is
`{"ports": [...]}` in the same order. Every accepted connection gets its own connection to the
upstream and two pumps: a reader that stamps each chunk with `arrival + delay` and a sender that
waits for that time and sends it on. The delay is per direction and per chunk, not per byte, and
chunks are sent in the order they arrived (each direction is a FIFO and the delay is fixed), so a
gRPC connection's HTTP/2 streams work as they do without it, only `2 x delay` later per round trip.

It runs as a process of its own so its timing never waits for the benchmark's GIL. It is bounded:
it exits when its stdin closes (the benchmark is gone, whatever happened to it), after
`--max-seconds`, or when its process group is signalled. A line `stats` on stdin is answered with
one JSON line per call: per listener, connections, bytes and chunks each way, how late chunks left
(the delay's accuracy) and the HTTP/2 requests clients opened (a gRPC call is one new stream whose
first frame is HEADERS), counted from the client's bytes without decoding anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

CHUNK_BYTES = 256 * 1024
Chunks = queue.SimpleQueue[tuple[float, bytes] | None]  # (when to send, bytes); None: the end
CONNECT_TIMEOUT_SECONDS = 5.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
HEADERS_FRAME = 0x1
STREAM_ID_MASK = 0x7FFF_FFFF


class RequestCounter:
    """HTTP/2 requests in a client's byte stream: HEADERS frames that open a new (higher) stream id.

    Only frame headers are looked at; payloads are skipped. A connection that does not start with
    the HTTP/2 preface (an HTTP/1.1 probe, say) is not counted.
    """

    def __init__(self) -> None:
        self.is_http2: bool | None = None  # unknown until the preface has arrived
        self.requests = 0
        self._preface = b""
        self._header = bytearray()
        self._skip = 0
        self._last_stream = 0

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data) and self.is_http2 is not False:
            if self.is_http2 is None:
                take = min(len(H2_PREFACE) - len(self._preface), len(data) - position)
                self._preface += data[position : position + take]
                position += take
                if not H2_PREFACE.startswith(self._preface):
                    self.is_http2 = False
                elif len(self._preface) == len(H2_PREFACE):
                    self.is_http2 = True
            elif self._skip:
                take = min(self._skip, len(data) - position)
                self._skip -= take
                position += take
            else:
                take = min(FRAME_HEADER_BYTES - len(self._header), len(data) - position)
                self._header += data[position : position + take]
                position += take
                if len(self._header) == FRAME_HEADER_BYTES:
                    length = int.from_bytes(self._header[0:3], "big")
                    stream = int.from_bytes(self._header[5:9], "big") & STREAM_ID_MASK
                    if self._header[3] == HEADERS_FRAME and stream > self._last_stream:
                        self.requests += 1
                        self._last_stream = stream
                    self._skip = length
                    self._header.clear()


@dataclass
class Direction:
    """What one direction of all of a listener's connections carried, and how punctually."""

    chunks: int = 0
    bytes: int = 0
    late_total_seconds: float = 0.0
    late_max_seconds: float = 0.0

    def sent(self, size: int, late: float) -> None:
        self.chunks += 1
        self.bytes += size
        self.late_total_seconds += late
        self.late_max_seconds = max(self.late_max_seconds, late)


@dataclass
class Listener:
    """One delay, one listening port, every connection it accepted."""

    delay_seconds: float
    upstream: tuple[str, int]
    listening: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    connections: int = 0
    failed_connects: int = 0
    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)
    counters: list[RequestCounter] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def listen(self) -> int:
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return int(self.listening.getsockname()[1])

    def _accept(self) -> None:
        while True:
            client, _ = self.listening.accept()
            try:
                server = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT_SECONDS)
            except OSError:
                with self.lock:
                    self.failed_connects += 1
                client.close()
                continue
            server.settimeout(None)
            for each in (client, server):
                each.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            counter = RequestCounter()
            with self.lock:
                self.connections += 1
                self.counters.append(counter)
            Connection(self, client, server, counter).start()

    def stats(self) -> dict[str, object]:
        with self.lock:
            http2 = [counter for counter in self.counters if counter.is_http2]
            return {
                "delay_ms": self.delay_seconds * 1000,
                "connections": self.connections,
                "http2_connections": len(http2),
                "failed_connects": self.failed_connects,
                "requests": sum(counter.requests for counter in http2),
                "up": vars(self.up).copy(),
                "down": vars(self.down).copy(),
            }


class Connection:
    """A client connection and its upstream: a reader and a delayed sender for each direction."""

    def __init__(self, listener: Listener, client: socket.socket, server: socket.socket, counter: RequestCounter):
        self.listener = listener
        self.sockets = (client, server)
        self.counter = counter
        self._closed = False
        self._finished = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        client, server = self.sockets
        for source, target, direction, counter in (
            (client, server, self.listener.up, self.counter),
            (server, client, self.listener.down, None),
        ):
            chunks: Chunks = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(source, chunks, counter), daemon=True).start()
            threading.Thread(target=self._send, args=(target, chunks, direction), daemon=True).start()

    def _read(
        self,
        source: socket.socket,
        chunks: Chunks,
        counter: RequestCounter | None,
    ) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                chunks.put((time.monotonic() + self.listener.delay_seconds, data))
                if counter is not None:
                    counter.feed(data)
        except OSError:
            self.close()
        finally:
            chunks.put(None)  # the sender passes the end on once what came before it has been sent

    def _send(self, target: socket.socket, chunks: Chunks, direction: Direction) -> None:
        try:
            while (item := chunks.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                late = time.monotonic() - due
                target.sendall(data)
                with self.listener.lock:
                    direction.sent(len(data), late)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        with self._lock:
            self._finished += 1
            both = self._finished == 2
        if both:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
            each.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, action="append", required=True, help="one listener per value")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="exit after this long whatever happens")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    sys.setswitchinterval(0.0005)  # a woken sender must not wait long for a thread that holds the GIL
    watchdog = threading.Timer(args.max_seconds, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    listeners = [Listener(delay / 1000, (host, int(port))) for delay in args.delay_ms]
    print(json.dumps({"ports": [listener.listen() for listener in listeners]}), flush=True)
    for line in sys.stdin:  # ends when the benchmark closes stdin or is gone
        if line.strip() == "stats":
            print(json.dumps([listener.stats() for listener in listeners]), flush=True)
    os._exit(0)  # every thread is a daemon; do not wait for connections to drain


if __name__ == "__main__":
    main()

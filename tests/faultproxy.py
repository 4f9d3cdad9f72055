"""A TCP proxy the tests control, put between an agent and its broker to break the network on purpose.

Modes, switchable while connections are open:

* ``pass``: bytes flow both ways (with ``delay_s`` and ``jitter_s`` added per chunk when set);
* ``blackhole``: connections stay open but nothing is forwarded either way: a half-open link, the
  failure only a keepalive finds;
* ``down``: every open connection is cut and new ones are refused at once (connection reset), as a
  dead link or a rebooting router does.

Counters say what happened (connections accepted, cut, bytes forwarded), so a test can tell a
reconnect from a link that never broke. Threads, not asyncio: the tests driving it are synchronous.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field

PASS, BLACKHOLE, DOWN = "pass", "blackhole", "down"


@dataclass
class Counters:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    forwarded_bytes: int = 0
    connections: list[float] = field(default_factory=list)  # monotonic times of accepted connections


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = PASS
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def set(self, mode: str, *, delay_s: float = 0.0, jitter_s: float = 0.0) -> None:
        """Switch mode; ``down`` cuts every open connection at once."""
        with self._lock:
            self.mode, self.delay_s, self.jitter_s = mode, delay_s, jitter_s
            doomed = list(self._pairs) if mode == DOWN else []
            if doomed:
                self._pairs.clear()
        for pair in doomed:
            self.counters.cut += 1
            _close(*pair)

    def close(self) -> None:
        self._stopped.set()
        self.set(DOWN)
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == DOWN:
                self.counters.refused += 1
                # RST rather than FIN: the client sees a refused connection, not a polite close.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            self.counters.accepted += 1
            self.counters.connections.append(time.monotonic())
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                _close(source, sink)
                return
            while self.mode == BLACKHOLE and not self._stopped.is_set():
                # Held, not dropped: TCP would retransmit, so the bytes arrive if the link heals in time.
                time.sleep(0.05)
            if self.mode == DOWN or self._stopped.is_set():
                _close(source, sink)
                return
            if self.delay_s or self.jitter_s:
                time.sleep(max(0.0, self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s)))
            try:
                sink.sendall(chunk)
            except OSError:
                _close(source, sink)
                return
            self.counters.forwarded_bytes += len(chunk)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

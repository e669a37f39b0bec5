"""A fake broker for tests: a real TCP server on 127.0.0.1 speaking the wire frames.

Plain sockets and a thread, so it serves any test style (blocking, asyncio,
pytest-twisted via ``deferToThread``). It plays the broker's side by sending
frames (take them from the transcript) and records what the backend sends.

    with FakeBroker() as broker:
        backend = start_backend(port=broker.port)
        conn = broker.accept()
        conn.send_frame({"request_id": "r1", "action": "connection_request", "params": {...}})
        reply = conn.recv_frame()
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import Any

__all__ = ["BackendConnection", "FakeBroker"]


class BackendConnection:
    """One backend's TCP connection, seen from the fake broker."""

    def __init__(self, sock: socket.socket) -> None:
        # Blocking before the reader starts: a recv begun under a connect timeout would keep it, and
        # a quiet spell that long would end the reader as if the connection had closed.
        sock.settimeout(None)
        self.sock = sock
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.lines.put(line)
        except OSError:
            pass
        finally:
            self.closed.set()
            self.lines.put(None)

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (for malformed input)."""
        self.sock.sendall(data)

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Write one frame as the reference broker does: compact JSON and a newline."""
        self.send_raw(json.dumps(frame, separators=(",", ":")).encode() + b"\n")

    def recv_line(self, timeout: float = 5.0) -> bytes:
        """The next line the backend sent; AssertionError on timeout or close."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the backend sent nothing within {timeout}s") from None
        if line is None:
            self.lines.put(None)
            raise AssertionError("the backend closed the connection")
        return line

    def recv_frame(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame the backend sent, decoded."""
        return json.loads(self.recv_line(timeout))

    def recv_frames(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.recv_frame(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def assert_silent(self, seconds: float = 0.2) -> None:
        """Fail if the backend sends anything within ``seconds``."""
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return
        if line is not None:
            raise AssertionError(f"the backend sent {line!r}")
        self.lines.put(None)

    def wait_closed(self, timeout: float = 5.0) -> None:
        if not self.closed.wait(timeout):
            raise AssertionError(f"the backend kept the connection open for {timeout}s")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeBroker:
    """Listens on 127.0.0.1 (a free port unless ``port`` is given) for backends."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.connections: list[BackendConnection] = []

    def accept(self, timeout: float = 5.0) -> BackendConnection:
        """Wait for the next backend to connect."""
        self.listener.settimeout(timeout)
        try:
            sock, _ = self.listener.accept()
        except socket.timeout:
            raise AssertionError(f"no backend connected within {timeout}s") from None
        conn = BackendConnection(sock)
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        """Stop listening and drop every backend connection."""
        self.listener.close()
        for conn in self.connections:
            conn.close()

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

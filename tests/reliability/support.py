"""What the reliability tests share: brokers and backends as child processes, raw peers, bounded waits.

Child processes are the demo suite's (``tests.demo.support``: ``Child``,
``launching``, ``start_broker``, ``free_port``); this module adds the backend faces of
``tests/reliability/faces.py``, raw TCP backends for exact frame checks, a
ticking WebSocket client, and the waits the fault tests need. Every wait has
a timeout.
"""

from __future__ import annotations

import itertools
import json
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.demo.support import Broker, Child, Launch, OpenWs, free_port, launching, open_when_served, start_broker
from tests.reliability import faces
from tests.support.fakebroker import BackendConnection

__all__ = [
    "AutoBackend", "Broker", "Child", "FACES", "Launch", "OpenWs", "Ticker", "chat", "count", "free_port",
    "freeze", "kill", "launching", "open_client", "open_when_served", "raw_backend", "receive_text", "restart_broker", "rss_kib",
    "start_broker", "start_broker_at", "start_face", "upgrade_request", "wait_until",
]

TWISTD = Path(sys.executable).parent / "twistd"
#: The four backend faces: BackendService under twistd, PyStrandsClient, AsyncPyStrandsClient, PyStrands.
FACES = ("twistd", "client", "async", "app")


def start_face(launch: Launch, kind: str, tcp_port: int, *flags: str, name: str = "") -> Child:
    """A backend face of ``faces.py`` connecting to 127.0.0.1:``tcp_port``; ``flags`` as twistd pystrands'."""
    if kind == "twistd":
        args = [str(TWISTD), "-n", "--pidfile=", "pystrands", "--backend", "tests.reliability.faces.TwistedFace",
                "--broker", f"tcp:host=127.0.0.1:port={tcp_port}", "--stop-timeout", str(faces.STOP_TIMEOUT),
                *flags]
    else:
        args = ["-m", "tests.reliability.faces", kind, "--port", str(tcp_port), *flags]
    return launch(args, name=name or kind)


def restart_broker(launch: Launch, old: Broker, *flags: str, name: str) -> Broker:
    """A new broker on ``old``'s ports (``old`` must be gone)."""
    return start_broker(launch, *flags, ws_port=old.ws_port, tcp_port=old.tcp_port, name=name)


def kill(child: Child) -> None:
    """SIGKILL ``child`` and reap it."""
    child.process.kill()
    child.process.wait(5.0)


def freeze(child: Child, frozen: bool) -> None:
    """SIGSTOP (``frozen``) or SIGCONT ``child``."""
    child.process.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0, child: Child | None = None) -> float:
    """Poll ``predicate`` until true; the seconds it took. On timeout, fail quoting ``child``'s output."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            message = f"timed out after {timeout}s waiting for {what}"
            raise child.fail(message) if child is not None else AssertionError(message)
        time.sleep(0.02)
    return time.monotonic() - started


def count(child: Child, text: str) -> int:
    """How many times ``child`` has printed ``text``."""
    return child.output().count(text)


def receive_text(ws: ClientConnection, wanted: Callable[[str], bool], timeout: float = 10.0) -> str:
    """The first text message for which ``wanted`` is true, skipping others; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    skipped: list[Any] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no wanted message within {timeout}s; skipped {skipped[-10:]}")
        try:
            message = ws.recv(timeout=left)
        except TimeoutError:
            continue
        if isinstance(message, str) and wanted(message):
            return message
        skipped.append(message)


def open_client(url: str) -> ClientConnection:
    """A connected WebSocket client, for code without the ``open_ws`` fixture (close it yourself)."""
    return connect(url, open_timeout=5, close_timeout=1).__enter__()  # entered, as websockets wants


def chat(ws: ClientConnection, text: str, timeout: float = 10.0) -> None:
    """Send ``text`` and wait for the backend's ``echo:<text>``."""
    ws.send(text)
    receive_text(ws, lambda message: message == f"echo:{text}", timeout)


class Ticker:
    """A WebSocket client at ``url`` that sends ``tick`` every ``interval`` seconds, reconnecting as needed.

    It keeps data flowing to a backend (the broker's own heartbeats come every
    15 s), so that a small idle timeout fires only when the broker is silent.
    """

    def __init__(self, open_ws: OpenWs, url: str, interval: float = 0.2) -> None:
        self._open_ws = open_ws
        self._url = url
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ws = open_when_served(self._open_ws, self._url, timeout=self._interval)
                while not self._stop.wait(self._interval):
                    ws.send("tick")
            except (OSError, InvalidStatus, InvalidHandshake, ConnectionClosed):
                self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def raw_backend(tcp_port: int, token: str | None = None) -> BackendConnection:
    """A backend that is a plain socket (the test reads and writes frames), optionally authenticated."""
    conn = BackendConnection(socket.create_connection(("127.0.0.1", tcp_port), timeout=5.0))
    if token is not None:
        conn.send_frame({"request_id": "auth", "action": "auth", "params": {"token": token}})
    return conn


class AutoBackend:
    """A raw backend served by a thread: it accepts every handshake, and queues every other event.

    A handshake on ``/ws/<room>`` joins ``<room>`` with a fresh client id;
    heartbeats and the broker's ``hello`` are skipped. The test reads the events in order, exactly as
    the broker wrote them, and may send frames of its own.
    """

    #: Who the failure messages name.
    name = "the broker's backend"

    def __init__(self, tcp_port: int, token: str | None = None) -> None:
        self.conn = raw_backend(tcp_port, token)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        #: Why the serving thread stopped early (a frame it could not take), reported by ``next_event``.
        self.broken: Exception | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def admission(self, request: dict[str, Any]) -> dict[str, Any]:
        """The ``response`` params for a ``connection_request`` frame: accepted, with a fresh client id."""
        return {"accepted": True, "client_id": f"client-{next(self._ids)}",
                "room_id": request["params"]["url"].rsplit("/", 1)[-1], "metadata": {}}

    def _serve(self) -> None:
        try:
            while (line := self.conn.lines.get()) is not None:
                frame = json.loads(line)
                if frame["action"] == "connection_request":
                    self.write({"request_id": frame["request_id"], "action": "response",
                                "params": self.admission(frame)})
                elif frame["action"] not in ("heartbeat", "hello"):
                    self.events.put(frame)
        except Exception as error:  # reported to the test, not lost in a thread
            self.broken = error

    def write(self, frame: dict[str, Any]) -> None:
        """Write one frame (from any thread)."""
        with self._lock:
            self.conn.send_frame(frame)

    send = write

    def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event frame from the broker (not a handshake, not a heartbeat)."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            broken = f" (it stopped serving: {self.broken!r})" if self.broken is not None else ""
            raise AssertionError(f"{self.name} got no event within {timeout}s{broken}") from None

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first event for which ``wanted`` is true, skipping others."""
        deadline = time.monotonic() + timeout
        while not wanted(event := self.next_event(max(0.0, deadline - time.monotonic()))):
            pass
        return event

    def close(self) -> None:
        self.conn.close()


def upgrade_request(path: str) -> bytes:
    """A well-formed WebSocket handshake request for ``path``, as raw bytes."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def start_broker_at(launch: Launch, *flags: str, ws_port: int, tcp_port: int, name: str = "broker") -> Broker:
    """``python -m pystrands server *flags`` whose flags (``--ws-endpoint``, ``--tcp-endpoint``) name the ports
    itself; ready once both ``ws_port`` and ``tcp_port`` on 127.0.0.1 accept connections (TLS ones included)."""
    child = launch(["-m", "pystrands", "server", *flags], name=name)
    child.wait_for_port(ws_port)
    child.wait_for_port(tcp_port)
    return Broker(child, ws_port, tcp_port)

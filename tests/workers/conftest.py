"""Fixtures of the ``--workers`` tests: a real redis-server (the cluster tests'), and a supervisor process.

Everything is a real process on 127.0.0.1: ``python -m pystrands server
--workers N`` (the supervisor and its workers), raw TCP backends, and
``websockets`` clients. The supervisor's stderr carries each worker's log
lines after ``[worker N pid P]``, which tells a test which worker a backend
connected to.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import RedisServer
from tests.support.fakebroker import BackendConnection
from tests.support.ports import free_port

TIMEOUT = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: A timestamp as twisted.logger's text observers write it.
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
READY = re.compile(r"PyStrands broker: (\d+) workers, WebSocket on port (\d+) .*backends on [^:]+:(\d+)")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cluster tests' redis-server (no persistence, a free loopback port), one for this session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield f"{server.url}/0"
    server.stop()


class Supervisor:
    """A running ``python -m pystrands server --workers N``: its ports, its log lines, its workers."""

    def __init__(self, process: subprocess.Popen[str], ready: bool = True) -> None:
        """Follow ``process``'s log (its stderr, or its stdout when that carries both, as under twistd);
        with ``ready``, wait for the ready line on stdout and for every worker to listen."""
        self.process = process
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stdout: queue.Queue[str | None] = queue.Queue()
        log = process.stderr if process.stderr is not None else process.stdout
        threading.Thread(target=self._pump, args=(log, self._lines), daemon=True).start()
        if not ready:
            return
        threading.Thread(target=self._pump, args=(process.stdout, self._stdout), daemon=True).start()
        line = self._stdout.get(timeout=TIMEOUT * 2)
        match = READY.search(line or "")
        assert match, f"no ready line, got {line!r}; log:\n" + "\n".join(self.log)
        self.workers, self.ws_port, self.tcp_port = (int(group) for group in match.groups())
        for _ in range(self.workers):
            self.wait_log(r"Worker \d+ \(pid \d+\) listens")

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def wait_log(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first log line from now on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; log:\n"
                                     + "\n".join(self.log)) from None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"the supervisor ended before logging {pattern!r}; log:\n" + "\n".join(self.log))
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def worker_pids(self) -> dict[int, int]:
        """Worker number -> pid, from the "Worker N (pid P) listens" lines seen so far (the latest wins)."""
        pids: dict[int, int] = {}
        for line in self.log:
            match = re.search(r"Worker (\d+) \(pid (\d+)\) listens", line)
            if match:
                pids[int(match[1])] = int(match[2])
        return pids

    def backend_on(self, worker: int, attempts: int = 60) -> BackendConnection:
        """A raw TCP backend that the kernel handed to ``worker`` (others that went elsewhere are closed)."""
        for _ in range(attempts):
            sock = socket.create_connection(("127.0.0.1", self.tcp_port), timeout=TIMEOUT)
            connection = BackendConnection(sock)
            assert connection.recv_frame()["action"] == "hello"
            landed = int(self.wait_log(r"\[worker (\d+) pid \d+\] .*Backend connected")[1])
            if landed == worker:
                return connection
            connection.close()
        raise AssertionError(f"no backend connection reached worker {worker} in {attempts} attempts")

    def worker_serving(self, client_port: int) -> int:
        """The pid of the worker that holds the server side of the WebSocket client on local port ``client_port``."""
        wanted = (f"0100007F:{self.ws_port:04X}", f"0100007F:{client_port:04X}")
        inode = next(fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if tuple((fields := line.split())[1:3]) == wanted)
        for pid in self.worker_pids().values():
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
        raise AssertionError(f"no worker holds the connection from port {client_port}")

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the supervisor (None: it was signalled already); its exit status once it ends (every log
        line read)."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout)
        while (line := self._lines.get(timeout=TIMEOUT)) is not None:
            self.log.append(line)
        self._lines.put(None)
        return status


@pytest.fixture
def start_workers(redis_url: str) -> Iterator[Callable[..., Supervisor]]:
    """Start ``python -m pystrands server --workers N --redis <the fixture's, or redis=...>`` on free ports;
    stopped after."""
    started: list[Supervisor] = []

    def start(workers: int = 2, *flags: str, redis: str = redis_url) -> Supervisor:
        command = [sys.executable, "-m", "pystrands", "server", "--workers", str(workers), "--redis", redis,
                   "--ws-port", "0", "--tcp-port", "0", *flags]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)  # a process group of its own, as in a terminal
        started.append(process)
        return Supervisor(process)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()  # the workers follow (they get SIGTERM when their parent dies, too)
            process.wait(TIMEOUT * 2)


def serve_echo(backend: BackendConnection, worker: int, served: dict[int, list[str]], room: str | None = None) -> None:
    """Answer ``backend``'s frames in a thread: accept every client (id: the URL's last part; into ``room``, or
    a room of its own), echo each message as ``echo:<message>`` to its sender, and note in ``served`` which
    worker had whom."""
    def serve() -> None:
        while (line := backend.lines.get()) is not None:
            frame = json.loads(line)
            if frame["action"] == "connection_request":
                client_id = frame["params"]["url"].rsplit("/", 1)[-1]
                served.setdefault(worker, []).append(client_id)
                backend.send_frame({"request_id": frame["request_id"], "action": "response",
                                    "params": {"accepted": True, "client_id": client_id,
                                               "room_id": room or f"room-{client_id}", "metadata": {}}})
            elif frame["action"] == "new_message":
                backend.send_frame({"request_id": "echo", "action": "message_to_connection",
                                    "params": {"conn_id": frame["params"]["context"]["client_id"],
                                               "message": "echo:" + frame["params"]["message"]}})

    threading.Thread(target=serve, daemon=True).start()

"""Running the examples and the embedded broker as child processes, with bounded waits.

Every process writes its output to a file under the test's tmp_path, which
a failing wait quotes, so a broken example explains itself in the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHAT_STATIC = REPO / "examples" / "chat" / "static"



class Child:
    """A Python child process started from the repository root (or ``cwd``), its output kept in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.args = args
        self.log = log
        environment = {name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")}
        environment.update(env or {}, PYTHONUNBUFFERED="1")
        with open(log, "ab") as output:
            self.process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=environment,
                                            stdout=output, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace")

    def fail(self, why: str) -> AssertionError:
        """An error naming the command and quoting its output."""
        return AssertionError(f"{why}: {' '.join(self.args)}\n--- output ---\n{self.output()}")

    def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        """Return once ``port`` on 127.0.0.1 accepts connections; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.fail(f"exited with status {self.process.returncode} before port {port} opened")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise self.fail(f"port {port} did not open within {timeout}s")

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        """Return once the process has printed ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise self.fail(f"exited with status {self.process.returncode} before printing {text!r}")
            time.sleep(0.05)
        raise self.fail(f"did not print {text!r} within {timeout}s")

    def interrupt(self, timeout: float = 15.0) -> int:
        """Send SIGINT (what Ctrl-C sends) and return the exit status."""
        return self.stop(signal.SIGINT, timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``signum`` unless exited; kill it (and fail) if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5.0)
            raise self.fail(f"did not exit within {timeout}s of signal {signum}") from None


@dataclass
class Broker:
    """An embedded broker child process and its two ports."""

    child: Child
    ws_port: int
    tcp_port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}/"


Launch = Callable[..., Child]
OpenWs = Callable[[str], ClientConnection]


@contextlib.contextmanager
def launching(directory: Path, grace: float) -> Iterator[Launch]:
    """launch(args, name=..., env=None, cwd=REPO) -> Child, output in ``directory``; every child stopped on exit.

    A child still running gets SIGCONT (a frozen one must be able to die) and
    SIGTERM, ``grace`` seconds to stop what it started itself, then SIGKILL.
    """
    started: list[Child] = []

    def launch(args: list[str], name: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Child:
        child = Child(args, directory / f"{name}.log", env, cwd)
        started.append(child)
        return child

    try:
        yield launch
    finally:
        for child in reversed(started):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGCONT)
                child.process.terminate()
                try:
                    child.process.wait(grace)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait(5.0)


def start_broker(launch: Launch, *flags: str, ws_port: int = 0, tcp_port: int = 0,
                 name: str = "broker") -> Broker:
    """``python -m pystrands server`` on free ports (or the given ones), once both ports listen.

    The backend port is not probed (a probe would be a backend for a moment, one that the broker
    greets and may route a handshake to): the broker's own line says it listens. The WebSocket
    port is probed too, since a restarted broker of the same name appends to the same log.
    """
    ws_port = ws_port or free_port()
    tcp_port = tcp_port or free_port()
    child = launch(["-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port), *flags],
                   name=name)
    child.wait_for_port(ws_port)
    child.wait_for_output(f":{tcp_port}")  # "... backends on 127.0.0.1:<tcp_port>"
    return Broker(child, ws_port, tcp_port)


def receive_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    """The next WebSocket message, decoded as JSON."""
    return json.loads(ws.recv(timeout=timeout))


def receive_until(ws: ClientConnection, wanted: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """The first JSON message for which ``wanted`` is true, skipping others; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no wanted message within {timeout}s; got {seen}")
        try:
            message = receive_json(ws, left)
        except TimeoutError:
            continue
        if wanted(message):
            return message
        seen.append(message)


def open_when_served(open_ws: OpenWs, url: str, timeout: float = 15.0) -> ClientConnection:
    """Open a WebSocket, retrying while the broker answers 503 (no backend connected yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_ws(url)
        except InvalidStatus as refused:
            if refused.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""What the cluster tests share: a real redis-server, cluster nodes as processes, a raw backend, bounded waits."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection

from tests.demo.support import Broker, Launch, start_broker
from tests.reliability.support import AutoBackend

__all__ = ["ClusterBackend", "RedisServer", "metric", "ready", "silent", "start_node", "texts", "wait_until"]

#: Seconds between the test nodes' heartbeats: short, for short tests, long enough for a loaded machine.
HEARTBEAT = 1.0


class RedisServer:
    """Debian's redis-server on 127.0.0.1:``port``, no persistence; it can be stopped and started again."""

    def __init__(self, directory: Path, port: int, *options: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            why = "the cluster tests need Debian's redis-server (apt-get install redis-server; .ci/run installs it)"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        self.executable = executable
        self.directory = directory
        self.port = port
        #: More redis-server options (``--requirepass``, TLS).
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start, and return once it accepts connections."""
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.executable, "--save", "", "--appendonly", "no", "--port", str(self.port),
                 "--bind", "127.0.0.1", "--dir", str(self.directory), *self.options],
                stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 10.0, "redis-server to accept connections")

    def stop(self) -> None:
        """Stop it (SIGKILL: what a crash or a lost network looks like to the nodes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)
        self.process = None

    def _answers(self) -> bool:
        try:
            return self.command(b"PING") in (b"+PONG", b"-NOAUTH Authentication required.")
        except OSError:
            return False

    def command(self, *args: bytes, before: tuple[tuple[bytes, ...], ...] = ()) -> bytes:
        """Run one command (after those ``before`` it: AUTH, SELECT); the last line of its reply.

        Enough for the short replies the tests read: PING, PUBLISH, a PUBSUB NUMSUB of one channel,
        a GET of a number.
        """
        commands = [*before, args]
        request = b"".join(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg)
                                                                  for arg in command) for command in commands)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # Redis answers, then closes: the whole reply is what was read
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        return reply.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]

    def subscribers(self, channel: bytes) -> int:
        """How many connections are subscribed to ``channel``."""
        return int(self.command(b"PUBSUB", b"NUMSUB", channel).lstrip(b":"))


def start_node(launch: Launch, redis: RedisServer, name: str, *flags: str, cluster: str = "test",
               url: str = "") -> Broker:
    """A broker that is a node of ``cluster`` in ``redis`` (at ``url`` if given), once connected to Redis."""
    node = start_broker(launch, "--redis", url or redis.url, "--cluster-name", cluster,
                        "--cluster-heartbeat", str(HEARTBEAT), "--metrics", *flags, name=name)
    node.child.wait_for_output("connected to Redis")
    return node


class ClusterBackend(AutoBackend):
    """A raw backend served by a thread: accepts every handshake on ``/ws/<room>`` as ``<name>-<n>``.

    Every other frame but heartbeats and ``hello`` is queued for the test, in the order the broker wrote it.
    """

    def __init__(self, tcp_port: int, name: str, client_id: str | None = None) -> None:
        self.name = name
        #: The id of every accepted client, if given (else ``<name>-<n>``).
        self.client_id = client_id
        self._requests = itertools.count()
        super().__init__(tcp_port)

    def admission(self, request: dict[str, Any]) -> dict[str, Any]:
        params = super().admission(request)
        return {**params, "client_id": self.client_id or f"{self.name}-{params['client_id'].split('-')[-1]}",
                "metadata": {"by": self.name}}

    def send(self, action: str, params: dict[str, Any], request_id: str | None = None) -> str:  # type: ignore[override]
        """Write one frame of ``action`` (from any thread); its request id."""
        request_id = request_id or f"{self.name}-r{next(self._requests)}"
        self.write({"request_id": request_id, "action": action, "params": params})
        return request_id

    def request(self, action: str, params: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send an extension request; the params of its reply."""
        request_id = self.send(action, params)
        return self.wait_for(lambda event: event["action"] == "reply" and event["request_id"] == request_id,
                             timeout)["params"]


def node_id(node: Broker) -> str:
    """The cluster's name for ``node``, as its start line gives it (``Cluster node <id> ...``)."""
    return node.child.output().split("Cluster node ", 1)[1].split(" ", 1)[0]


def texts(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[str]:
    """The next ``count`` text messages of a WebSocket client."""
    deadline = time.monotonic() + timeout
    return [str(ws.recv(timeout=max(0.01, deadline - time.monotonic()))) for _ in range(count)]


def silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Fail if the client gets a message within ``seconds``."""
    try:
        message = ws.recv(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {message!r}")


def metric(node: Broker, name: str) -> float:
    """The sum of a metric's samples on a node's /metrics (``name`` with labels, as written there)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.ws_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def ready(node: Broker) -> int:
    """The HTTP status of a node's /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.ws_port}/readyz", timeout=5) as page:
            return int(page.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took. AssertionError after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start

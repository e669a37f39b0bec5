"""Fixtures of the broker suite: a broker on a private reactor in a thread, and its clients.

One style throughout: the broker (and any Twisted backend) runs on a
reactor instance of its own, in a thread, passed as a parameter (never the
global reactor); the test drives blocking clients: ``websockets`` sync
WebSocket clients and raw TCP backends. Every wait has a timeout.
"""

from __future__ import annotations

import queue
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from websockets.sync.client import ClientConnection, connect

from pystrands.broker import BrokerConfig, BrokerService
from tests.support.fakebroker import BackendConnection

TIMEOUT = 5.0


class ReactorThread:
    """A reactor of its own, running in a daemon thread."""

    def __init__(self) -> None:
        self.reactor = SelectReactor()
        self._thread = threading.Thread(target=self.reactor.run,
                                        kwargs={"installSignalHandlers": False}, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = TIMEOUT, **kwargs: Any) -> Any:
        """Run ``fn`` in the reactor thread and return its result (a Deferred's, once fired)."""
        outcome: queue.Queue[Any] = queue.Queue()
        self.reactor.callFromThread(lambda: maybeDeferred(fn, *args, **kwargs).addBoth(outcome.put))
        try:
            result = outcome.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{fn!r} did not finish within {timeout}s") from None
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Poll ``predicate`` in the reactor thread until true."""
        def check(seconds_left: float) -> Any:
            from twisted.internet.task import deferLater
            if predicate():
                return None
            if seconds_left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            return deferLater(self.reactor, 0.01, check, seconds_left - 0.01)

        self.call(check, timeout, timeout=timeout + 1)

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(TIMEOUT)


class RunningBroker:
    """A started BrokerService and what a test needs to reach it."""

    def __init__(self, thread: ReactorThread, service: BrokerService, ports: tuple[int, int]) -> None:
        self.thread = thread
        self.service = service
        self.ws_port, self.tcp_port = ports
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._sockets: list[Any] = []

    @property
    def broker(self) -> Any:
        return self.service.broker

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    def backend(self, token: str | None = None, ready: bool = True, hello: bool = True) -> BackendConnection:
        """A raw TCP backend (optionally sending an auth frame first), registered with the broker.

        Once it is ready, its ``hello`` frame is read and checked (unless ``hello`` is False).
        """
        before = self.thread.call(lambda: len(self.broker.backends))
        sock = socket.create_connection(("127.0.0.1", self.tcp_port), timeout=TIMEOUT)
        conn = BackendConnection(sock)
        self._sockets.append(conn)
        if token is not None:
            conn.send_frame({"request_id": "auth-1", "action": "auth", "params": {"token": token}})
        if ready:
            self.thread.wait_for(lambda: len(self.broker.backends) > before, "the backend to register")
            if hello:
                greeting = conn.recv_frame()
                assert greeting["action"] == "hello", greeting
        return conn

    def open(self, path: str, **kwargs: Any) -> Future[ClientConnection]:
        """Start a WebSocket handshake in a worker thread (a backend must answer it)."""
        kwargs.setdefault("open_timeout", TIMEOUT)
        kwargs.setdefault("close_timeout", 1)
        future = self._pool.submit(_connect, self.url(path), **kwargs)
        future.add_done_callback(lambda done: done.exception() or self._sockets.append(done.result()))
        return future

    def accept(self, backend: BackendConnection, path: str, client_id: str, room_id: str = "lobby",
               metadata: Any = None, **kwargs: Any) -> ClientConnection:
        """Open a client, have ``backend`` accept it; returns the open client (new_connection read)."""
        future = self.open(path, **kwargs)
        request = backend.recv_frame()
        assert request["action"] == "connection_request", request
        backend.send_frame(respond(request, client_id, room_id, metadata if metadata is not None else {}))
        client = future.result(TIMEOUT)
        event = backend.recv_frame()
        assert event["action"] == "new_connection" and event["params"]["context"]["client_id"] == client_id
        return client

    def close(self) -> None:
        for item in self._sockets:
            item.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _connect(url: str, **kwargs: Any) -> ClientConnection:
    """A connected sync client; entered as a context manager, as websockets 17 wants."""
    return connect(url, **kwargs).__enter__()


def respond(request: dict[str, Any], client_id: str, room_id: str, metadata: Any,
            accepted: bool = True) -> dict[str, Any]:
    """The backend's response frame to a connection_request."""
    return {"request_id": request["request_id"], "action": "response",
            "params": {"accepted": accepted, "client_id": client_id, "room_id": room_id,
                       "metadata": metadata}}


@pytest.fixture
def reactor_thread() -> Iterator[ReactorThread]:
    thread = ReactorThread()
    yield thread
    thread.stop()


@pytest.fixture
def start_broker(reactor_thread: ReactorThread) -> Iterator[Callable[..., RunningBroker]]:
    """Start a broker on free ports; keywords are BrokerConfig fields."""
    started: list[RunningBroker] = []

    def start(**options: Any) -> RunningBroker:
        options.setdefault("ws_port", 0)
        options.setdefault("tcp_port", 0)
        service = BrokerService(BrokerConfig(**options), reactor_thread.reactor, stop_timeout=2.0)
        reactor_thread.call(service.startService)
        ports = reactor_thread.call(service.when_listening)
        running = RunningBroker(reactor_thread, service, ports)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.service.running:
            reactor_thread.call(running.service.stopService)
        running.close()


@pytest.fixture
def broker_warnings() -> Iterator[list[str]]:
    """The warnings (and worse) the broker logs during the test, formatted."""
    seen: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if (event.get("log_namespace", "").startswith("pystrands.broker")
                and event.get("log_level", LogLevel.info) >= LogLevel.warn):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def broker(start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    """A broker with the default settings (on free ports)."""
    return start_broker()

"""A real-reactor harness for core tests: a recording backend wired to a FakeBroker."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint

from pystrands import Backend
from pystrands.protocol import BrokerClientFactory
from pystrands.settings import BackendSettings
from tests.support.fakebroker import BackendConnection, FakeBroker

FAST = dict(reconnect_delay=0.05, max_reconnect_delay=0.2, reconnect_backoff=2.0)


def in_thread(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run a blocking FakeBroker call without blocking the reactor."""
    return threads.deferToThread(fn, *args)


class Recorder(Backend):
    """Records every callback as (name, args) and lets tests await them."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.events: DeferredQueue[tuple[str, tuple[Any, ...]]] = DeferredQueue()
        self.answer: Callable[..., Any] = lambda request: True

    def _record(self, name: str, *args: Any) -> None:
        self.events.put((name, args))

    def on_connection_request(self, request: Any) -> Any:
        self._record("on_connection_request", request)
        return self.answer(request)

    def on_new_connection(self, context: Any) -> None:
        self._record("on_new_connection", context)

    def on_message(self, message: str, context: Any) -> None:
        self._record("on_message", message, context)

    def on_disconnect(self, context: Any) -> None:
        self._record("on_disconnect", context)

    def on_error(self, error: str, context: Any) -> None:
        self._record("on_error", error, context)

    def next_event(self, timeout: float = 5.0) -> Deferred[tuple[str, tuple[Any, ...]]]:
        return self.events.get().addTimeout(timeout, self.reactor)


class Harness:
    """A FakeBroker, a backend and a factory connected to it on 127.0.0.1."""

    def __init__(self, reactor: Any, backend: Any = None, **settings: Any) -> None:
        self.reactor = reactor
        self.broker = FakeBroker()
        self.backend = backend if backend is not None else Recorder(reactor)
        self.factory = BrokerClientFactory(self.backend, reactor, BackendSettings(**{**FAST, **settings}))

    def endpoint(self, port: int | None = None) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", port or self.broker.port, timeout=2)

    def start(self) -> Deferred[BackendConnection]:
        """Connect the factory and wait for the broker side of the connection."""
        self.factory.connect(self.endpoint())
        return in_thread(self.broker.accept)

    def close(self) -> Deferred[None]:
        stopped = self.factory.stop(1.0)
        stopped.addBoth(lambda _: self.broker.close())
        return stopped

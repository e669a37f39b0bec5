"""A backend's own Prometheus metrics, opt-in through the ``metrics_registry`` setting.

Pass a ``prometheus_client.CollectorRegistry`` as ``metrics_registry`` to
any face (``PyStrandsClient(..., metrics_registry=registry)``, the asyncio
face, the decorator app, ``BackendService``) and the connection counts into
it; serve the registry as you like (``prometheus_client.start_http_server(port,
registry=registry)``, or ``generate_latest(registry)`` in your own web app).
Without it (the default) nothing is counted and ``prometheus_client`` is not
imported. Several connections given the same registry share its metrics.

Metric names (all prefixed ``pystrands_backend_``):

``events_total{kind}``
    counter: events from the broker handed to a handler, by frame action
    (``connection_request``, ``new_connection``, ``new_message``,
    ``disconnected``, ``error``).
``handler_seconds{kind}``
    histogram: seconds from a handler's start until its result is done (a
    Deferred or coroutine settled; for the blocking face with worker threads,
    the worker's run).
``reconnects_total``
    counter: connections to the broker made after the first one.
``buffered_sends_total``
    counter: sends kept in the send buffer because the connection was down.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred

from .dispatch import handler_name

__all__ = ["EVENT_KINDS", "BackendMetrics", "backend_metrics", "check_registry"]

#: The ``kind`` label values of ``events_total`` and ``handler_seconds``: the dispatched frame actions.
EVENT_KINDS = ("connection_request", "new_connection", "new_message", "disconnected", "error")

#: Bucket bounds of ``handler_seconds``.
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Submit = Callable[..., None]

_SHARED: weakref.WeakKeyDictionary[Any, BackendMetrics] = weakref.WeakKeyDictionary()
# Clients on their own reactor threads may share a registry: one of them creates its metrics,
# or prometheus_client would refuse the second set as duplicated timeseries.
_SHARED_LOCK = threading.Lock()


def check_registry(registry: Any) -> Any:
    """``registry`` if it is a ``prometheus_client.CollectorRegistry`` or None; else TypeError."""
    if registry is None:
        return None
    from prometheus_client import CollectorRegistry

    if not isinstance(registry, CollectorRegistry):
        raise TypeError("metrics_registry must be a prometheus_client.CollectorRegistry or None,"
                        f" not {type(registry).__name__}")
    return registry


def backend_metrics(registry: Any) -> BackendMetrics | None:
    """The :class:`BackendMetrics` counting into ``registry`` (one per registry), or None without one."""
    if registry is None:
        return None
    with _SHARED_LOCK:
        metrics = _SHARED.get(registry)
        if metrics is None:
            metrics = _SHARED[registry] = BackendMetrics(registry)
        return metrics


class BackendMetrics:
    """The metrics of the backend connections that count into one registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        events = Counter("pystrands_backend_events", "Events from the broker handed to a handler, by kind.",
                         ["kind"], registry=registry)
        seconds = Histogram("pystrands_backend_handler_seconds",
                            "Seconds from a handler's start until its result is done, by kind.",
                            ["kind"], buckets=HANDLER_BUCKETS, registry=registry)
        # Labelled children bound once: no label lookup per event.
        self._events = {kind: events.labels(kind) for kind in EVENT_KINDS}
        self._seconds = {kind: seconds.labels(kind) for kind in EVENT_KINDS}
        #: Connections made after the first one.
        self.reconnects = Counter("pystrands_backend_reconnects",
                                  "Connections to the broker made after the first one.", registry=registry)
        #: Sends kept in the send buffer because the connection was down.
        self.buffered_sends = Counter("pystrands_backend_buffered_sends",
                                      "Sends buffered while the connection was down.", registry=registry)
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        #: The last counting submit made per kind, handed out again for the same submit.
        self._counted: dict[str, _Counted] = {}

    def connected(self, factory: Any) -> None:
        """A connection of ``factory`` is made: after its first, a reconnect."""
        if factory in self._connections:
            self.reconnects.inc()
        else:
            self._connections.add(factory)

    def counting(self, submit: _Submit, kind: str) -> _Submit:
        """``submit`` (the dispatcher's) that counts the event and times its handler.

        ``submit`` itself for a frame that is not an event (a heartbeat, a
        reply, ``hello``); for an event, the same wrapper each time for the
        same ``submit`` and kind, nothing built per frame.
        """
        counted = self._counted.get(kind)
        if counted is not None and counted.submit == submit:
            return counted
        events, seconds = self._events.get(kind), self._seconds.get(kind)
        if events is None or seconds is None:
            return submit
        # A plain replace: connections on other reactor threads that share these metrics at worst build their own.
        counted = self._counted[kind] = _Counted(submit, events.inc, seconds.observe)
        return counted


class _Counted:
    """A dispatcher's submit for one kind of event: counts each event and times its handler."""

    __slots__ = ("_count", "_last", "_observe", "submit")

    def __init__(self, submit: _Submit, count: Callable[[], None], observe: Callable[[float], None]) -> None:
        self.submit = submit
        self._count = count
        self._observe = observe
        #: (handler, its timed wrapper): handlers are the backend's bound methods, the same each event.
        self._last: tuple[Callable[..., Any] | None, Callable[..., Any]] = (None, submit)

    def __call__(self, key: Hashable, size: int, handler: Callable[..., Any], *args: Any) -> None:
        self._count()
        last = self._last  # one read: another thread may replace it, never half of it
        if last[0] != handler:
            last = self._last = (handler, _timed(handler, self._observe))
        self.submit(key, size, last[1], *args)


def _timed(handler: Callable[..., Any], observe: Callable[[float], None]) -> Callable[..., Any]:
    """``handler`` reporting the seconds until its result is done (as the dispatcher waits for it)."""

    def timed(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = handler(*args)
        except BaseException:
            observe(time.perf_counter() - start)
            raise
        if result is None:
            observe(time.perf_counter() - start)
            return None
        if iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            return result.addBoth(_observed, observe, start)
        observe(time.perf_counter() - start)
        return result

    timed.__qualname__ = handler_name(handler)  # the dispatcher's logs name it
    return timed


def _observed(outcome: object, observe: Callable[[float], None], start: float) -> object:
    """A Deferred's callback: observe the seconds since ``start``, pass the outcome on."""
    observe(time.perf_counter() - start)
    return outcome

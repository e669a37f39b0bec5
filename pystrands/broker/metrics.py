"""The broker's Prometheus metrics, and its ``/metrics``, ``/healthz`` and ``/readyz`` pages.

Each :class:`~pystrands.broker.router.Broker` owns a :class:`BrokerMetrics`
with a ``CollectorRegistry`` of its own (never prometheus_client's global
one), so several brokers in one process do not collide.

The broker code counts with one-line hooks that add to plain integer
attributes (``metrics.messages_in += 1``): no lock, no label lookup on the
per-message path. A collector turns them, and what can be read from the
broker at scrape time (clients, backends, the queue, each backend's
in-flight work), into metric families when ``/metrics`` is scraped. The
one histogram, the connection-request round trip, is a prometheus_client
``Histogram``. Everything runs on the reactor thread, the scrape too.

Metric names (all prefixed ``pystrands_broker_``):

``clients``
    gauge: open WebSocket clients.
``clients_opened_total``
    counter: WebSocket clients opened since start.
``handshakes_total{outcome}``
    counter: WebSocket-port handshakes by outcome: ``accepted`` (upgraded),
    ``rejected`` (refused by a backend, or a client id in use),
    ``unavailable`` (503: no backend, or it went away), ``timeout`` (no
    request head within ``handshake_timeout``, or no backend answer within
    ``auth_timeout``), ``malformed`` (not a valid WebSocket handshake),
    ``origin`` (origin not allowed), ``over_limit`` (a socket refused by
    ``max_clients`` or ``max_clients_per_address``), ``error`` (500).
``messages_received_total{kind}``
    counter: messages from WebSocket clients to the broker (``kind="text"``).
``messages_sent_total{kind}``
    counter: messages written to WebSocket clients, by the backend frame that
    sent them: ``room``, ``connection``, ``broadcast`` (a room message to three
    clients counts three).
``received_bytes_total``, ``sent_bytes_total``
    counter: bytes read from and written to open WebSocket clients (frames
    with their headers, as on the wire).
``backends``
    gauge: connected (ready) backends.
``queued_events``
    gauge: events kept while no backend is connected.
``dropped_total{reason}``
    counter: losses by reason: ``queue_overflow`` (an event pushed out of the
    full queue), ``client_write`` (a client dropped: its socket took nothing
    for ``client_write_timeout`` or let ``max_client_buffer`` pile up),
    ``backend`` (a backend connection dropped: write timeout, buffer, or a
    failed ``auth``), ``cluster_unpublished`` (a message for other cluster nodes
    that could not be published to Redis: unreachable, or the connection was
    lost before Redis confirmed it; see docs/CLUSTER.md).
``cluster_rejected_total``
    counter: payloads on the cluster's Redis channels that were not cluster
    messages (foreign or corrupt), skipped.
``cluster_redis_up``, ``cluster_nodes``, ``cluster_nodes_with_backends``
    gauges of a cluster node only: 1 while both its Redis connections are
    up (else 0); the other nodes it hears; those of them with a backend.
``backend_in_flight_requests{backend}``, ``backend_load{backend}``, ``backend_buffered_bytes{backend}``
    gauges per connected backend: connection requests sent to it and not yet
    answered; clients and handshakes routed to it; bytes waiting for its
    socket. ``backend`` is a number given to each backend connection when a
    scrape first sees it; the series go when the backend goes, so the label
    is bounded by the backends connected at once (an operator's choice, not
    a client's), not by how many ever connected.
``connection_request_seconds``
    histogram: round trip of a handshake's ``connection_request``, from the
    frame sent to a backend until that backend's ``response`` (accepted or
    not). Requests that time out or whose backend goes are not observed:
    they count in ``handshakes_total``.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from .router import Broker

__all__ = ["PREFIX", "STATUS_PATHS", "BrokerMetrics", "MetricsPage", "QuietSite", "StatusPage", "add_status_pages",
           "metrics_site"]

#: The prefix of every broker metric name.
PREFIX = "pystrands_broker_"

#: Bucket bounds of ``connection_request_seconds``: a backend answers in milliseconds; auth_timeout is 10 s.
ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HANDSHAKE_OUTCOMES = ("accepted", "rejected", "unavailable", "timeout", "malformed", "origin",
                      "over_limit", "error")


class BrokerMetrics:
    """One broker's counts and its registry; the hooks in the broker add to the attributes."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        #: The registry ``/metrics`` serves: this broker's alone.
        self.registry = CollectorRegistry(auto_describe=True)
        #: WebSocket clients opened since start.
        self.clients_opened = 0
        #: Handshakes by outcome (the keys of ``HANDSHAKE_OUTCOMES``).
        self.handshakes = dict.fromkeys(HANDSHAKE_OUTCOMES, 0)
        #: Messages from WebSocket clients.
        self.messages_in = 0
        #: Messages to WebSocket clients sent by room, connection and broadcast frames.
        self.sent_room = 0
        self.sent_connection = 0
        self.sent_broadcast = 0
        #: Bytes read from and written to open WebSocket clients.
        self.bytes_in = 0
        self.bytes_out = 0
        #: Clients dropped because their socket would not take writes.
        self.client_write_drops = 0
        #: Backend connections dropped.
        self.backend_drops = 0
        #: Cluster messages that could not be published (Redis unreachable, or lost with the connection).
        self.cluster_unpublished = 0
        #: Payloads on the cluster's channels that were not cluster messages, skipped.
        self.cluster_rejected = 0
        #: Round trip of connection requests, in seconds.
        self.round_trip = Histogram(
            PREFIX + "connection_request_seconds",
            "Seconds from a connection_request sent to a backend until its response.",
            buckets=ROUND_TRIP_BUCKETS, registry=self.registry)
        self._backend_numbers: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._next_number = itertools.count()
        self.registry.register(_Collector(self))

    def handshake(self, outcome: str) -> None:
        """Count a handshake's outcome (one of ``HANDSHAKE_OUTCOMES``)."""
        self.handshakes[outcome] += 1

    def handshake_refused(self, status: int, timed_out: bool) -> None:
        """Count a handshake a backend did not accept: timed out, 503, or rejected."""
        self.handshakes["timeout" if timed_out else "unavailable" if status == 503 else "rejected"] += 1

    def backend_number(self, backend: Any) -> str:
        """The ``backend`` label of a backend connection: fixed for its life."""
        number = self._backend_numbers.get(backend)
        if number is None:
            number = self._backend_numbers[backend] = str(next(self._next_number))
        return number

    def scrape(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class _Collector(Collector):
    """Turns the counts and the broker's state into metric families at scrape time."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics, broker = self._metrics, self._metrics._broker
        yield GaugeMetricFamily(PREFIX + "clients", "Open WebSocket clients.", value=len(broker.rooms))
        yield CounterMetricFamily(PREFIX + "clients_opened", "WebSocket clients opened since start.",
                                  value=metrics.clients_opened)
        handshakes = CounterMetricFamily(PREFIX + "handshakes", "WebSocket-port handshakes by outcome.",
                                         labels=["outcome"])
        for outcome, count in metrics.handshakes.items():
            handshakes.add_metric([outcome], count)
        yield handshakes
        received = CounterMetricFamily(PREFIX + "messages_received",
                                       "Messages from WebSocket clients.", labels=["kind"])
        received.add_metric(["text"], metrics.messages_in)
        yield received
        sent = CounterMetricFamily(PREFIX + "messages_sent",
                                   "Messages to WebSocket clients, by the backend frame that sent them.",
                                   labels=["kind"])
        sent.add_metric(["room"], metrics.sent_room)
        sent.add_metric(["connection"], metrics.sent_connection)
        sent.add_metric(["broadcast"], metrics.sent_broadcast)
        yield sent
        yield CounterMetricFamily(PREFIX + "received_bytes", "Bytes read from open WebSocket clients.",
                                  value=metrics.bytes_in)
        yield CounterMetricFamily(PREFIX + "sent_bytes", "Bytes written to open WebSocket clients.",
                                  value=metrics.bytes_out)
        yield GaugeMetricFamily(PREFIX + "backends", "Connected backends.", value=len(broker.backends))
        yield GaugeMetricFamily(PREFIX + "queued_events", "Events kept while no backend is connected.",
                                value=len(broker.queue))
        dropped = CounterMetricFamily(PREFIX + "dropped", "Losses by reason.", labels=["reason"])
        dropped.add_metric(["queue_overflow"], broker.queue.dropped)
        dropped.add_metric(["client_write"], metrics.client_write_drops)
        dropped.add_metric(["backend"], metrics.backend_drops)
        dropped.add_metric(["cluster_unpublished"], metrics.cluster_unpublished)
        yield dropped
        yield CounterMetricFamily(PREFIX + "cluster_rejected",
                                  "Payloads on the cluster's Redis channels that were not cluster messages.",
                                  value=metrics.cluster_rejected)
        for name, (text, value) in broker.cluster_gauges().items():
            yield GaugeMetricFamily(PREFIX + name, text, value=value)
        yield from self._per_backend(broker)

    def _per_backend(self, broker: Broker) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(PREFIX + "backend_in_flight_requests",
                                      "Connection requests sent to a backend and not yet answered.",
                                      labels=["backend"])
        load = GaugeMetricFamily(PREFIX + "backend_load", "Clients and handshakes routed to a backend.",
                                 labels=["backend"])
        buffered = GaugeMetricFamily(PREFIX + "backend_buffered_bytes", "Bytes waiting for a backend's socket.",
                                     labels=["backend"])
        waiting: dict[int, int] = {}
        for pending in broker._pending.values():  # scraped on the reactor thread, as the broker runs
            waiting[id(pending.backend)] = waiting.get(id(pending.backend), 0) + 1
        for backend in broker.backends:
            label = [self._metrics.backend_number(backend)]
            in_flight.add_metric(label, waiting.get(id(backend), 0))
            load.add_metric(label, backend.load)
            buffered.add_metric(label, getattr(backend, "buffered_bytes", 0))
        yield in_flight
        yield load
        yield buffered


class MetricsPage(Resource):
    """``/metrics``: the broker's metrics in Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: BrokerMetrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        """The current metrics."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return self._metrics.scrape()


class StatusPage(Resource):
    """A plain-text health answer: ``check()`` gives the status and the text, asked at each request."""

    isLeaf = True

    def __init__(self, check: Callable[[], tuple[int, bytes]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._check = check

    def render_GET(self, request: Request) -> bytes:
        """The status and text of ``check()``, never cached."""
        status, text = self._check()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return text


#: The paths of the status pages (``/metrics`` only where metrics are served).
STATUS_PATHS = (b"/healthz", b"/readyz", b"/metrics")


def add_status_pages(root: IResource, broker: Broker, metrics: bool) -> None:
    """Put ``/healthz``, ``/readyz`` and (if ``metrics``) ``/metrics`` under ``root``.

    ``/healthz``: 200 ``ok`` while the broker runs (it answers, so it runs);
    ``/readyz``: 200 while a backend can take a handshake (one is connected here or, for a cluster
    node, on a node it can reach), else 503.
    """
    healthz, readyz, metrics_path = (path[1:] for path in STATUS_PATHS)
    root.putChild(healthz, StatusPage(lambda: (200, b"ok\n")))
    root.putChild(readyz, StatusPage(
        lambda: (200, b"ready\n") if broker.ready else (503, f"{broker.unready_reason}\n".encode())))
    if metrics:
        root.putChild(metrics_path, MetricsPage(broker.metrics))


class QuietSite(Site):
    """A ``Site`` that writes no access log: probes every few seconds and scrapes would fill the broker's log."""

    def __init__(self, resource: IResource, timeout: float, reactor: Any) -> None:
        """Serve ``resource`` on ``reactor``; a connection idle for ``timeout`` seconds is closed."""
        super().__init__(resource, timeout=timeout, reactor=reactor)  # type: ignore[no-untyped-call]  # Site's
        self.noisy = False  # nor a line per start and stop of the factory

    def log(self, request: http.Request) -> None:
        """Nothing: the broker logs what matters itself, and counts requests in its metrics."""


def metrics_site(broker: Broker) -> Site:
    """The site of a ``metrics_endpoint`` listener: ``/metrics``, ``/healthz``, ``/readyz``, else 404."""
    root = pages.notFound()
    add_status_pages(root, broker, metrics=True)
    return QuietSite(root, timeout=broker.config.handshake_timeout, reactor=broker.clock)

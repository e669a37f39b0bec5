"""BrokerService: the embedded broker as an ``IService``.

Starting it listens on the WebSocket port and the backend port (endpoint
strings from :class:`~pystrands.broker.config.BrokerConfig`); stopping it
stops listening, closes WebSocket clients with 1001 (Going Away), then
closes backends once the frames written to them (the ``disconnected``
events of those clients) are sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from .backends import BackendFactory
from .config import BrokerConfig
from .metrics import metrics_site
from .router import Broker
from .websocket import GOING_AWAY, Stage, WebSocketFactory

__all__ = ["BrokerService", "describe", "fit_file_limit"]

log = Logger()


class BrokerService(Service):
    """Runs the broker. ``reactor`` defaults to the global one, looked up at start.

    Pass a :class:`BrokerConfig`, or its fields as keywords.
    """

    def __init__(self, config: BrokerConfig | None = None, reactor: Any = None,
                 stop_timeout: float = 5.0, **options: Any) -> None:
        #: What the broker was told: ports, limits, timeouts.
        self.config = config if config is not None else BrokerConfig(**options)
        self.reactor = reactor
        #: Seconds connections get to close when the service stops, before they are cut.
        self.stop_timeout = stop_timeout
        #: The router, once started.
        self.broker: Broker | None = None
        #: The backend side, once started.
        self.backends: BackendFactory | None = None
        #: The WebSocket side, once started.
        self.websockets: WebSocketFactory | None = None
        self._ports: list[IListeningPort] = []
        self._outcome: Failure | tuple[int, int] | None = None
        self._waiters: list[Deferred[tuple[int, int]]] = []

    # -- addresses ---------------------------------------------------------

    def when_listening(self) -> Deferred[tuple[int, int]]:
        """Fires with (WebSocket port, backend port) once both listen; fails if either cannot.

        A side listening on something else than a port (a UNIX socket) shows as port 0.
        """
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        if self._outcome is not None:
            return succeed(self._outcome)
        waiter: Deferred[tuple[int, int]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    @property
    def ws_address(self) -> IAddress:
        """The address the WebSocket side listens on, once :meth:`when_listening` has fired."""
        return self._ports[0].getHost()

    @property
    def tcp_address(self) -> IAddress:
        """The address the backend side listens on, once :meth:`when_listening` has fired."""
        return self._ports[1].getHost()

    @property
    def metrics_address(self) -> IAddress | None:
        """The address of the ``metrics_endpoint`` listener once :meth:`when_listening` has fired; None without one."""
        return self._ports[2].getHost() if len(self._ports) > 2 else None

    # -- life cycle ----------------------------------------------------------

    def startService(self) -> None:
        """Listen on both sides (:meth:`when_listening` tells the outcome) and start the heartbeats."""
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor  # the outermost layer's choice: the global one
            self.reactor = reactor
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.broker = _router(self.config, reactor)
        self.backends = BackendFactory(self.broker)
        self.websockets = WebSocketFactory(self.broker)
        listeners = [_listen(reactor, self.config.ws_listen, self.websockets),
                     _listen(reactor, self.config.tcp_listen, self.backends)]
        if self.config.metrics_endpoint is not None:
            listeners.append(_listen(reactor, self.config.metrics_endpoint, metrics_site(self.broker)))
        listening = gatherResults(listeners, consumeErrors=True)
        listening.addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, ports: list[IListeningPort]) -> None:
        self._ports = ports
        assert self.broker is not None  # made by startService, which waits for this
        self.broker.start()
        log.info("PyStrands broker: WebSocket on {ws}, backends on {tcp}",
                 ws=describe(self.ws_address), tcp=describe(self.tcp_address))
        if self.metrics_address is not None:
            log.info("PyStrands broker: metrics on {address}/metrics", address=describe(self.metrics_address))
        self._settle((getattr(self.ws_address, "port", 0), getattr(self.tcp_address, "port", 0)))

    def _cannot_listen(self, failure: Failure) -> None:
        failure.trap(FirstError)
        self._settle(cast(FirstError, failure.value).subFailure)

    def _settle(self, outcome: Failure | tuple[int, int]) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def stopService(self) -> Deferred[None]:
        """Stop listening, close clients with 1001, then backends once the frames for them are sent."""
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ports, self._ports = self._ports, []
        await DeferredList([maybeDeferred(port.stopListening) for port in ports])
        broker, websockets, backend_factory = self.broker, self.websockets, self.backends
        if broker is None or websockets is None or backend_factory is None:  # never started
            return
        broker.stop()
        for connection in list(websockets.connections):
            if connection.stage is not Stage.OPEN:
                connection.transport.loseConnection()
        clients = list(broker.rooms.everyone())
        await self._close(clients, lambda client: client.close(GOING_AWAY, "the broker is stopping"),
                          lambda client: client.abort("the broker is stopping"))
        backends = list(backend_factory.connections)
        await self._close(backends, lambda backend: backend.close(), lambda backend: backend.abort())
        await broker.shutdown()

    async def _close(self, connections: Iterable[Any], close: Any, abort: Any) -> None:
        """Close each connection; abort those still open after ``stop_timeout``."""
        connections = list(connections)
        for connection in connections:
            close(connection)
        gone = DeferredList([connection.gone for connection in connections])
        deadline = self.reactor.callLater(
            self.stop_timeout,
            lambda: [abort(connection) for connection in connections if not connection.gone.called])
        await gone
        if deadline.active():
            deadline.cancel()


def _router(config: BrokerConfig, reactor: Any) -> Broker:
    """One broker's router; a cluster node's with ``redis`` (only then is the cluster code imported)."""
    if config.redis is None:
        return Broker(config, reactor)
    from .cluster import ClusterBroker

    return ClusterBroker(config, reactor)


def describe(address: IAddress) -> str:
    """A listening address as a person reads it: ``host:port``, or a socket's path."""
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"  # type: ignore[attr-defined]  # IAddress declares no attributes
    name = getattr(address, "name", address)
    return f"unix:{os.fsdecode(name)}" if isinstance(name, (bytes, str)) else str(name)


def fit_file_limit(config: BrokerConfig) -> None:
    """Raise this process's open-file limit toward ``max_clients``; warn if it stays below.

    Every WebSocket socket is a file descriptor: with the common soft limit of
    1,024, a thousand sockets would make the broker refuse everyone, long
    before ``max_clients``. For the command-line entry points, not the library.
    """
    try:
        import resource
    except ImportError:  # not on Unix: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.max_clients + 256  # backends, listening ports, log files
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warn("The open-file limit ({limit}) is below --max-clients ({max_clients}) plus room for"
                 " backends: past it, new sockets are refused by the system. Raise it (ulimit -n)"
                 " or lower --max-clients.", limit=soft, max_clients=config.max_clients)


def _listen(reactor: Any, endpoint: str, factory: Any) -> Deferred[IListeningPort]:
    """Listen on ``endpoint``; a failure names it (a UNIX socket's folder that does not exist fails on
    Twisted's lock file, which would be all the error said)."""
    def name_it(failure: Failure) -> Failure:
        if failure.check(CannotListenError) or not failure.check(OSError):
            return failure
        error = cast(OSError, failure.value)
        raise OSError(f"Couldn't listen on {endpoint}: {error.strerror or error}.") from error

    listening: Deferred[IListeningPort] = serverFromString(reactor, endpoint).listen(factory)
    return listening.addErrback(name_it)

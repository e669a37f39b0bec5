"""BackendService: a backend's connection to its broker as an ``IService``.

Add it to any ``MultiService`` (a twistd application, a web app): starting
the service connects (and keeps reconnecting), stopping it lets in-flight
handlers finish, up to ``stop_timeout``, then closes.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint

from .protocol import BrokerClientFactory, as_backend
from .settings import BackendSettings, check_number

__all__ = ["DEFAULT_BROKER", "BackendService"]

#: Where the reference broker listens for backends by default.
DEFAULT_BROKER = "tcp:host=localhost:port=8081"


class BackendService(Service):
    """Runs ``backend`` (anything adaptable to IBackend) against a broker.

    ``endpoint`` is a client endpoint or an endpoint string; ``reactor`` is
    the one to use (the global reactor, looked up when the service starts,
    if none is given); other keywords are :class:`BackendSettings`.
    """

    def __init__(
        self,
        backend: object,
        endpoint: str | IStreamClientEndpoint = DEFAULT_BROKER,
        reactor: Any = None,
        stop_timeout: float = 5.0,
        **settings: Any,
    ) -> None:
        #: The backend, as an IBackend.
        self.backend = as_backend(backend)
        if isinstance(endpoint, str):
            clientFromString(reactor, endpoint)  # a malformed string fails here, not at start
        elif not IStreamClientEndpoint.providedBy(endpoint):
            raise TypeError(f"endpoint must be an endpoint string or a client endpoint, not {endpoint!r}")
        #: The broker's client endpoint, or its endpoint string.
        self.endpoint = endpoint
        #: How the connection behaves (reconnects, limits, token).
        self.settings = BackendSettings(**settings)
        #: Seconds in-flight handlers get when the service stops.
        self.stop_timeout = check_number("stop_timeout", stop_timeout, minimum=0)
        #: The reactor given, or None for the global one.
        self.reactor = reactor
        #: The running connection's factory (None before the service starts).
        self.factory: BrokerClientFactory | None = None

    @property
    def broker(self) -> BrokerClientFactory | None:
        """The IBrokerConnection of the running service (None before it starts)."""
        return self.factory

    def startService(self) -> None:
        """Connect to the broker (on the global reactor if none was given) and keep reconnecting."""
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor  # the outermost layer's choice: the global one
        endpoint, description = self.endpoint, None
        if isinstance(endpoint, str):
            endpoint, description = clientFromString(reactor, endpoint), endpoint
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.factory = BrokerClientFactory(self.backend, reactor, self.settings)
        self.factory.connect(endpoint, description)

    def stopService(self) -> Deferred[None]:
        """Stop reconnecting, let in-flight handlers finish (up to ``stop_timeout``), then close.

        Done within ``stop_timeout`` plus :data:`~pystrands.protocol.CLOSE_TIMEOUT` seconds: a close that
        does not complete by then (TLS waiting for the broker) is aborted.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self.factory is None:
            return succeed(None)
        return self.factory.stop(self.stop_timeout)

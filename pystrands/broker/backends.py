"""The backend side of the broker: TCP connections that speak JSON lines.

Each backend connection frames lines in linear time, decodes them with
:mod:`pystrands.wire`, checks the ``auth`` frame when the broker has a
token, and hands the rest to the router. Writes are bounded: a backend
whose socket stays unwritable for ``write_timeout`` seconds, or that lets
``max_backend_buffer`` bytes pile up, is dropped.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import wire
from ..errors import ProtocolError
from .config import BrokerConfig
from ..lines import LineSplitter
from .router import Broker

__all__ = ["BackendFactory", "BackendProtocol"]

log = Logger()


@implementer(IPushProducer)
class BackendProtocol(Protocol):
    """One backend's connection; registered as its own transport's producer to see write pressure."""

    def __init__(self, broker: Broker) -> None:
        config: BrokerConfig = broker.config
        self.broker = broker
        self.clock = broker.clock
        self.load = 0
        self._config = config
        self._splitter = LineSplitter(config.max_frame_size, self._overflow)
        self._authenticated = config.backend_token is None
        self._ready = False
        self._dropped = False
        self._auth_deadline: IDelayedCall | None = None
        self._stalled: IDelayedCall | None = None
        self._unflushed = 0
        #: Fires once the connection is gone.
        self.gone: Deferred[None] = Deferred()

    def __repr__(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return f"<backend {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}>"

    # -- life cycle ------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        if self._authenticated:
            self._become_ready()
        else:
            self._auth_deadline = self.clock.callLater(
                self._config.auth_timeout, self.drop, "it sent no auth frame in time")

    def _become_ready(self) -> None:
        self._ready = True
        log.info("Backend connected: {backend}", backend=self)
        self.broker.backend_ready(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for call in (self._auth_deadline, self._stalled):
            if call is not None and call.active():
                call.cancel()
        self.factory.connections.discard(self)
        if self._ready:
            self._ready = False
            log.info("Backend disconnected: {backend}", backend=self)
            self.broker.backend_lost(self)
        self.gone.callback(None)

    def drop(self, why: str) -> None:
        """Cut the connection now, discarding whatever is not written yet."""
        if self._dropped:
            return
        self._dropped = True
        log.warn("Dropped backend {backend}: {why}", backend=self, why=why)
        self.transport.abortConnection()

    def close(self) -> None:
        """Close once everything written so far has been sent."""
        self.transport.loseConnection()

    def abort(self) -> None:
        """Cut the connection without waiting (for a stop that took too long)."""
        self.transport.abortConnection()

    # -- reading ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        for line in self._splitter.feed(data):
            if self._dropped:
                return
            self._line(line)

    def _overflow(self, start: bytes) -> None:
        log.warn("Skipped a backend line longer than {limit} bytes: {excerpt}",
                 limit=self._config.max_frame_size, excerpt=wire.excerpt(start))

    def _line(self, line: bytes) -> None:
        try:
            frame = wire.decode_frame(line)
        except ProtocolError as exc:
            if self._authenticated:
                log.warn("Skipped a malformed backend frame ({why}): {excerpt}",
                         why=exc, excerpt=wire.excerpt(line))
            else:
                self.drop(f"its first frame is not a frame ({exc})")
            return
        if self._authenticated:
            self.broker.backend_frame(frame, line)
        elif frame.action == wire.AUTH and self._token_matches(frame.params.get("token")):
            self._authenticated = True
            self._auth_deadline.cancel()
            self._become_ready()
        else:
            self.drop(f"its first frame is {frame.action!r}, not an auth frame with the right token")

    def _token_matches(self, token: Any) -> bool:
        expected = self._config.backend_token
        return (isinstance(token, str) and expected is not None
                and hmac.compare_digest(token.encode(), expected.encode()))

    # -- writing ---------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Write a frame, or drop the backend if too much already waits to be written."""
        if self._dropped:
            return
        if self._stalled is not None:
            self._unflushed += len(frame)
            if self._unflushed > self._config.max_backend_buffer:
                self.drop(f"more than {self._config.max_backend_buffer} bytes wait to be written")
                return
        self.transport.write(frame)

    def pauseProducing(self) -> None:
        """The socket's send buffer is full: start the write timeout."""
        if self._stalled is None:
            self._stalled = self.clock.callLater(
                self._config.write_timeout, self.drop,
                f"its socket was not writable for {self._config.write_timeout}s")

    def resumeProducing(self) -> None:
        """The send buffer drained: the backend keeps up again."""
        if self._stalled is not None:
            if self._stalled.active():
                self._stalled.cancel()
            self._stalled = None
        self._unflushed = 0

    def stopProducing(self) -> None:
        """Nothing to stop: the connection is going away."""


class BackendFactory(Factory):
    """Builds a :class:`BackendProtocol` per backend connection."""

    noisy = False

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Open connections, authenticated or not.
        self.connections: set[BackendProtocol] = set()

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        protocol = BackendProtocol(self.broker)
        protocol.factory = self
        return protocol

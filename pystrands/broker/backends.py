"""The backend side of the broker: TCP connections that speak JSON lines.

Each backend connection frames lines in linear time, decodes them with
:mod:`pystrands.wire`, checks the ``auth`` frame when the broker has a
token, and hands the rest to the router. Writes go through an
:class:`~pystrands.broker.outbox.Outbox`: while a backend is congested the
router stops reading from its WebSocket clients, and once it drains they go
on. A backend is dropped only when its socket makes no progress for
``write_timeout`` seconds (or, as a last line of defence, when
``max_backend_buffer`` bytes pile up).
"""

from __future__ import annotations

import hmac
import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import wire
from ..errors import ProtocolError
from ..lines import LineSplitter
from .config import BrokerConfig
from .outbox import Outbox, send_at_once
from .router import Broker

if TYPE_CHECKING:
    from .._typing import IConnectedTransport

__all__ = ["BackendFactory", "BackendProtocol"]

log = Logger()

_numbers = itertools.count(1)


class BackendProtocol(Protocol):
    """One backend's connection: frames in, events out through a bounded :class:`Outbox`."""

    factory: BackendFactory
    #: Set by ``makeConnection``, the outbox by ``connectionMade``, before any other method here runs.
    transport: IConnectedTransport
    _outbox: Outbox

    def __init__(self, broker: Broker) -> None:
        config: BrokerConfig = broker.config
        self.broker = broker
        self.clock = broker.clock
        #: Clients and handshakes routed to this backend: new clients go to the least loaded.
        self.load = 0
        #: This connection's number in the broker's life, in the log of a backend without an address.
        self.number = next(_numbers)
        self._config = config
        self._splitter = LineSplitter(config.max_frame_size, self._overflow)
        self._authenticated = config.backend_token is None
        self._ready = False
        self._dropped = False
        self._auth_deadline: IDelayedCall | None = None
        #: Fires once the connection is gone.
        self.gone: Deferred[None] = Deferred()

    def __repr__(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        if peer is None or hasattr(peer, "port"):
            return f"<backend {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}>"
        return f"<backend #{self.number} on a UNIX socket>"  # whose peers have no address to tell them apart

    # -- life cycle ------------------------------------------------------

    def connectionMade(self) -> None:
        """Count the connection, set up its outbox, then wait for the auth frame if a token is required."""
        self.factory.connections.add(self)
        send_at_once(self.transport)
        self._outbox = Outbox(self.transport, self.clock, limit=self._config.max_backend_buffer,
                              timeout=self._config.write_timeout, on_fault=self.drop,
                              on_congestion=self._congestion)
        if self._authenticated:
            self._become_ready()
        else:
            self._auth_deadline = self.clock.callLater(
                self._config.auth_timeout, self.drop, "it sent no auth frame in time")

    def _become_ready(self) -> None:
        self._ready = True
        log.info("Backend connected: {backend}", backend=self)
        self.broker.backend_ready(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Give back what the connection held; the clients of a ready backend move on to others."""
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._outbox.stop()
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
        self.broker.metrics.backend_drops += 1
        log.warn("Dropped backend {backend}: {why}", backend=self, why=why)
        self._outbox.stop()
        self.transport.abortConnection()

    def close(self) -> None:
        """Close once everything written so far has been sent."""
        self._outbox.close()

    def abort(self) -> None:
        """Cut the connection without waiting (for a stop that took too long)."""
        self.transport.abortConnection()

    # -- reading ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Handle each complete line, none after a drop."""
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
            self.broker.backend_frame(frame, line, self)
        elif frame.action == wire.AUTH and self._token_matches(frame.params.get("token")):
            self._authenticated = True
            assert self._auth_deadline is not None  # set in connectionMade while not authenticated
            self._auth_deadline.cancel()
            self._become_ready()
        elif frame.action == wire.AUTH:
            self.drop("wrong backend token (its auth frame's token is not this broker's --backend-token)")
        else:
            self.drop(f"its first frame is {frame.action!r}, not the auth frame this broker's --backend-token asks for")

    def _token_matches(self, token: Any) -> bool:
        expected = self._config.backend_token
        return (isinstance(token, str) and expected is not None
                and hmac.compare_digest(token.encode(), expected.encode()))

    # -- writing ---------------------------------------------------------

    @property
    def congested(self) -> bool:
        """True while this backend's socket cannot take more: its clients should wait."""
        return self._outbox.congested

    @property
    def buffered_bytes(self) -> int:
        """Bytes written to this backend that wait for its socket."""
        return self._outbox.held_bytes

    def send(self, frame: bytes) -> None:
        """Write a frame (held while the socket is full)."""
        if not self._dropped:
            self._outbox.write(frame)

    def _congestion(self, congested: bool) -> None:
        if not congested and self._ready:
            self.broker.backend_drained(self)


class BackendFactory(Factory[BackendProtocol]):
    """Builds a :class:`BackendProtocol` per backend connection."""

    noisy = False

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: Open connections, authenticated or not.
        self.connections: set[BackendProtocol] = set()

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        """A :class:`BackendProtocol` for a new backend connection."""
        protocol = BackendProtocol(self.broker)
        protocol.factory = self
        return protocol

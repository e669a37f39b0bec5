"""Writes to one peer, bounded in bytes and in time, with congestion made visible.

Both sides of the broker write through an :class:`Outbox`: each WebSocket
client and each backend. It registers as its transport's streaming
producer, so Twisted tells it when the socket's send buffer fills and when
it has drained. While the socket is unwritable, writes wait here (counted);
on every drain, they go on until the socket fills again. So:

* ``congested`` says a peer is behind, and the owner stops reading what
  would add to it (backpressure reaches the sender's own socket);
* a peer whose socket makes no progress for ``timeout`` seconds, or that
  lets more than ``limit`` bytes wait, is reported through ``on_fault``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from zope.interface import implementer

if TYPE_CHECKING:
    from .._typing import IConnectedTransport

__all__ = ["Outbox", "send_at_once"]


def send_at_once(transport: ITransport) -> None:
    """Turn off Nagle's algorithm (as Go, and so the reference broker, does): small frames go now.

    Without it, a small write behind one not yet acknowledged waits for the
    peer's delayed ACK, about 40 ms on Linux. Transports without TCP (UNIX
    sockets) have nothing to turn off.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@implementer(IPushProducer)
class Outbox:
    """A transport's writes, held while its socket cannot take them."""

    def __init__(self, transport: IConnectedTransport, clock: IReactorTime, *, limit: int, timeout: float,
                 on_fault: Callable[[str], None],
                 on_congestion: Callable[[bool], None] = lambda congested: None) -> None:
        self.transport = transport
        self.clock = clock
        self.limit = limit
        self.timeout = timeout
        self._on_fault = on_fault
        self._on_congestion = on_congestion
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._writable = True
        self._reported = False
        self._stalled: IDelayedCall | None = None
        self._closing = ""
        self._stopped = False
        transport.registerProducer(self, True)

    @property
    def congested(self) -> bool:
        """True while the socket is unwritable: what is written now waits here."""
        return not self._writable

    @property
    def held_bytes(self) -> int:
        """Bytes waiting here for the socket."""
        return self._held_bytes

    def write(self, data: bytes) -> None:
        """Write now if the socket can take it, else hold it (a fault past ``limit`` bytes)."""
        if self._stopped:
            return
        if self._writable and not self._held:
            self.transport.write(data)  # may call pauseProducing() at once
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self.limit:
            self._fault(f"more than {self.limit} bytes wait to be written")

    def close(self, half: bool = False) -> None:
        """Close once everything held has been written; ``half``: only our side, keep reading.

        A WebSocket server half-closes after its close frame, so that what
        the client still sends meets a FIN, not a reset.
        """
        self._closing = "half" if half else "full"
        if not self._held:
            self._lose_connection()

    def stop(self) -> None:
        """The connection is gone or being cut: forget what is held, stop the clock."""
        self._stopped = True
        self._held.clear()
        self._held_bytes = 0
        self._cancel_timer()

    # -- IPushProducer: the transport's word on its send buffer -------------------

    def pauseProducing(self) -> None:
        """The socket is full: hold writes, and start the clock on its progress."""
        if self._stopped:
            return
        self._writable = False
        if self._stalled is None:
            self._stalled = self.clock.callLater(self.timeout, self._fault,
                                                 f"its socket made no progress for {self.timeout}s")
        self._report(True)

    def resumeProducing(self) -> None:
        """The socket drained: progress. Write what waits until it fills again."""
        if self._stopped:
            return
        self._cancel_timer()
        self._writable = True
        held = self._held
        while held and self._writable:
            data = held.popleft()
            self._held_bytes -= len(data)
            self.transport.write(data)
        if self._writable:
            if self._closing:
                self._lose_connection()
            self._report(False)

    def stopProducing(self) -> None:
        """The transport is going away: forget what is held."""
        self.stop()

    def _report(self, congested: bool) -> None:
        """Tell the owner when congestion starts and when it ends, once each."""
        if congested != self._reported:
            self._reported = congested
            self._on_congestion(congested)

    def _lose_connection(self) -> None:
        # A transport still holding a paused producer resumes it instead of closing: let go first.
        self.transport.unregisterProducer()
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if self._closing == "half" and lose_write is not None:
            lose_write()
        else:
            self.transport.loseConnection()

    def _fault(self, why: str) -> None:
        self._stalled = None
        if not self._stopped:
            self.stop()
            self._on_fault(why)

    def _cancel_timer(self) -> None:
        if self._stalled is not None:
            if self._stalled.active():
                self._stalled.cancel()
            self._stalled = None

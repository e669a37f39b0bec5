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

On a plain socket (a ``FileDescriptor`` without TLS), the writes of one
reactor turn are gathered and sent at the end of the turn with one
``writeSomeData`` call: many frames per system call, and none of the
transport's writer registration (two ``epoll_ctl`` and a dispatch per socket
per turn). What the socket does not take goes to the transport as before.
Past ``GATHER_LIMIT`` bytes the gathered writes go to the transport at once,
as before, so that its full buffer makes the peer congested within the turn,
and a busy turn does not push more into the kernel's socket buffer (ahead of
other senders' messages) than one transport write per turn would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport, ITransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from .._internals import write_at_once

if TYPE_CHECKING:
    from .._typing import IConnectedTransport

__all__ = ["GATHER_LIMIT", "Outbox", "end_sending", "send_at_once"]

log = Logger()

#: Bytes an Outbox gathers in a turn before it hands them to the transport without waiting for the turn's end.
GATHER_LIMIT = 64 * 1024


def send_at_once(transport: ITransport) -> None:
    """Turn off Nagle's algorithm (as Go, and so the reference broker, does): small frames go now.

    Without it, a small write behind one not yet acknowledged waits for the
    peer's delayed ACK, about 40 ms on Linux. Transports without TCP (UNIX
    sockets) have nothing to turn off.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class _Turn:
    """The outboxes of one clock with writes gathered in the current reactor turn; sent once it ends."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.pending: list[Outbox] = []

    def add(self, outbox: Outbox) -> None:
        """``outbox`` gathered its first write of the turn: send it when the turn's reads are done."""
        if not self.pending:
            self.clock.callLater(0, self.send)
        self.pending.append(outbox)

    def send(self) -> None:
        """Send every gathered outbox; one that fails is logged and does not strand the others' writes."""
        pending, self.pending = self.pending, []
        for outbox in pending:
            _send_logged(outbox)


def _send_logged(outbox: Outbox) -> None:
    """Send ``outbox``'s gathered writes; a failure is logged, not raised."""
    try:
        outbox.send_gathered()
    except Exception:
        log.failure("Sending the gathered writes to {transport} failed", transport=outbox.transport)


_TURNS: WeakKeyDictionary[IReactorTime, _Turn] = WeakKeyDictionary()


def _turn_of(clock: IReactorTime) -> _Turn:
    turn = _TURNS.get(clock)
    if turn is None:
        turn = _TURNS[clock] = _Turn(clock)
    return turn


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
        self._gathered: list[bytes] = []
        self._gathered_bytes = 0
        self._turn = _turn_of(clock) if isinstance(transport, FileDescriptor) else None
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
            if self._turn is None:
                self.transport.write(data)  # may call pauseProducing() at once
                return
            if not self._gathered:
                self._turn.add(self)
            self._gathered.append(data)
            self._gathered_bytes += len(data)
            if self._gathered_bytes > GATHER_LIMIT:
                self.send_gathered(direct=False)
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

    def send_gathered(self, direct: bool = True) -> None:
        """Send this turn's writes in one piece: straight to the socket while the transport holds nothing
        (unless not ``direct``: then the transport sends them on its next turn)."""
        gathered = self._gathered
        if not gathered:
            return
        data = b"".join(gathered) if len(gathered) > 1 else gathered[0]
        gathered.clear()
        self._gathered_bytes = 0
        # What reaches the transport's write may call pauseProducing() at once.
        if direct:
            write_at_once(self.transport, data)
        else:
            self.transport.write(data)

    def stop(self) -> None:
        """The connection is gone or being cut: forget what is held, stop the clock."""
        self._stopped = True
        self._gathered.clear()
        self._gathered_bytes = 0
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
        self.send_gathered()
        # A transport still holding a paused producer resumes it instead of closing: let go first.
        self.transport.unregisterProducer()
        if self._closing == "half":
            end_sending(self.transport)
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


def end_sending(transport: ITransport) -> None:
    """Send nothing after what was written, and read on: the peer then reads all of it instead of a reset
    (which a socket closed with unread input sends, and which discards what the peer has not read yet).

    A socket half-closes, also beneath a protocol wrapper such as the PROXY protocol's (``haproxy:``).
    TLS ends its stream instead (close_notify after the data; the socket closes once the peer ends too):
    Twisted's TLS wrapper passes ``loseWriteConnection`` on to the socket beneath it, whose FIN could go
    before the data, which the wrapper holds until the reactor's next turn (about one refusal in 200 lost
    its answer so). A socket after ``startTLS`` is TLS too.
    """
    beneath: ITransport | None = transport
    while isinstance(beneath, ProtocolWrapper) and not ISSLTransport.providedBy(beneath):
        beneath = beneath.transport  # a wrapper that only passes the bytes on: look at what it wraps
    lose_write = getattr(type(beneath), "loseWriteConnection", None)  # the transport's own, not passed on
    if beneath is None or lose_write is None or ISSLTransport.providedBy(beneath):
        transport.loseConnection()
    else:
        lose_write(beneath)

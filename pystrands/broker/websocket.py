"""The WebSocket side of the broker: a Twisted protocol driving ``websockets``' sans-I/O core.

``websockets.server.ServerProtocol`` (chosen in BENCHMARKS.md, "Choosing
the broker's WebSocket implementation") parses and validates the handshake
and the frames, answers pings and closes, and bounds a message's size. This
module is the I/O around it, and the broker's rules at each stage of a
socket's life on the WebSocket port:

``HEAD``
    The request head is read (at most ``MAX_HEAD`` bytes, within
    ``handshake_timeout``); the socket holds a slot of ``max_clients`` and
    of ``max_clients_per_address`` from the moment it connects.
``HTTP``
    Not under ``/ws/``: the head goes to the ``twisted.web`` site
    (``/pystrands.js``, the static folder, or 404), which owns the socket from then on.
``JUDGING``
    A well-formed handshake from an allowed origin waits for a backend's
    answer with its socket paused; bytes that came behind the head wait too.
``OPEN``
    Messages go to the router. They wait while this client's backend is
    congested and past ``max_client_rate``, and reading pauses (from the next
    read) while they wait or while this client's writes back up; pings keep
    it alive, silence past ``client_idle_timeout`` closes it.
``REFUSED``
    An HTTP error was sent and our side half-closed (over TLS: ended its TLS
    stream); what the client still sends is read and dropped until it hangs
    up (``REFUSAL_LINGER`` seconds at most), so that it reads the answer
    instead of a reset.
``CLOSED``
    Everything it held is given back, whatever stage it was in.
"""

from __future__ import annotations

import enum
import http
import logging
from collections import deque
from collections.abc import Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.server import Site
from websockets.exceptions import InvalidMessage, SecurityError
from websockets.frames import Frame, Opcode
from websockets.http11 import MAX_LINE_LENGTH, Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from zope.interface import implementer

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from ..ratelimit import ThrottledWarning
from .client_script import PATH, ClientScript
from .guards import AddressSlots, MessageAssembler, OriginPolicy, TokenBucket, TooManyFragments, decode_message
from .metrics import STATUS_PATHS, QuietSite, add_status_pages
from .outbox import Outbox, end_sending, send_at_once
from .router import Admission, Broker, Handshake, HandshakeRefused

if TYPE_CHECKING:
    from .._typing import IConnectedTransport

__all__ = ["MAX_HEAD", "REFUSAL_LINGER", "STATUS_RESERVE", "ClientConnection", "Stage", "WebSocketFactory",
           "http_response"]

log = Logger()

GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
#: Largest request head (request line and headers) in bytes; a bigger one gets HTTP 431.
MAX_HEAD = 64 * 1024
#: Bytes of a read handed to the WebSocket parser at a time (see ``dataReceived``).
PARSE_SLICE = 8 * 1024
#: Past this many bytes in a read, a client that must wait stops being read at once (see ``_pause``).
SMALL_READ = 8 * 1024
#: Seconds a refused socket may stay open for its client to read the answer and hang up.
REFUSAL_LINGER = 2.0
#: Sockets over the client limits that may still GET a status page at once (``/healthz``, ``/readyz``,
#: ``/metrics``): a full broker stays alive to its probes and scrapes, and such sockets stay few.
STATUS_RESERVE = 8
#: websockets logs each connection at INFO through stdlib logging; the broker logs for itself.
_QUIET = logging.getLogger("pystrands.broker.websockets")
_QUIET.setLevel(logging.CRITICAL + 1)
_QUIET.propagate = False


class Stage(enum.Enum):
    """Where a socket on the WebSocket port is in its life (see the module docstring)."""

    HEAD = "head"
    HTTP = "http"
    JUDGING = "judging"
    OPEN = "open"
    REFUSED = "refused"
    CLOSED = "closed"


# The members the per-message path compares with, as module globals: on CPython 3.11 each
# ``Enum.MEMBER`` lookup costs about 90 ns, several times per message.
_OPEN = Stage.OPEN
_WS_OPEN = State.OPEN
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class ClientConnection(Protocol):
    """One socket on the WebSocket port; once open, a ``Client`` for the router."""

    factory: WebSocketFactory
    admission: Admission
    #: Set by ``makeConnection`` before any method here runs.
    transport: IConnectedTransport
    #: The WebSocket protocol, from the handshake on (stages JUDGING and OPEN).
    _ws: ServerProtocol

    def __init__(self, broker: Broker, slots: AddressSlots, origins: OriginPolicy, site: Site) -> None:
        self.broker = broker
        self.clock = broker.clock
        self.config = broker.config
        self._metrics = broker.metrics
        #: Where the socket is in its life (see the module docstring).
        self.stage = Stage.HEAD
        self._slots = slots
        self._origins = origins
        self._site = site
        self._address = ""
        self._refusal: tuple[int, str] | None = None
        #: Over the limits, but serving a status page from the factory's reserve.
        self._status_slot = False
        self._head = bytearray()
        self._held_input = b""
        self._channel: Any = None
        self._outbox: Outbox | None = None
        self._assembler = MessageAssembler(self.config.max_fragments)
        self._rate = TokenBucket(self.config.max_client_rate, self.clock) if self.config.max_client_rate else None
        #: Read and not yet delivered: the parser's frames, and whole messages read by ``simple_messages``.
        self._events: deque[Frame | str] = deque()
        self._boundary = FrameBoundary()
        #: Why this client must wait (OPEN): its backend, its rate, or its own writes.
        self._pauses: set[str] = set()
        #: The transport is paused for ``_pauses`` (when, see ``_pause``).
        self._not_reading = False
        self._timer: IDelayedCall | None = None
        self._last_heard = 0.0
        self._last_ping = 0.0
        self._rate_wait: IDelayedCall | None = None
        self._ending = False
        #: Fires once the socket is gone.
        self.gone: Deferred[None] = Deferred()

    def __repr__(self) -> str:
        admission = getattr(self, "admission", None)
        who = repr(admission.client_id) if admission is not None else self._address or "?"
        return f"<WebSocket client {who} {self.stage.value}>"

    # -- the socket ----------------------------------------------------------

    def connectionMade(self) -> None:
        """Take a slot for the socket (or answer its refusal) and start the clock on its request head."""
        self.factory.connections.add(self)
        address = str(getattr(self.transport.getPeer(), "host", "?"))
        status = self._slots.take(address)
        send_at_once(self.transport)
        if status is None:
            self._address = address
            self._timer = self.clock.callLater(self.config.handshake_timeout, self._head_too_slow)
            return
        # Over a limit: no slot. Answer the request (a client that is still sending it
        # would miss an earlier answer, and a status page is served from the reserve), but
        # wait for it no more than REFUSAL_LINGER.
        why = ("too many clients" if status == 503
               else f"more than {self.config.max_clients_per_address} connections from {address}")
        self._refusal = (status, why)
        self._timer = self.clock.callLater(REFUSAL_LINGER, self._refuse_over_limit)

    def _refuse_over_limit(self) -> None:
        """Answer a socket taken over a limit with its refusal."""
        refusal = self._counted_refusal()
        self._answer(*refusal)

    def _counted_refusal(self) -> tuple[int, str]:
        """The refusal of a socket over a limit, counted and warned of (at most once a second) once: when
        it is answered, or when the socket goes first (a flood of sockets that connect and hang up)."""
        refusal, self._refusal = self._refusal, None
        assert refusal is not None
        self._metrics.handshake("over_limit")
        self.factory.refused_over_limit(why=refusal[1])
        return refusal

    def dataReceived(self, data: bytes) -> None:
        """Hand the bytes to the stage the socket is in."""
        stage = self.stage
        if stage is _OPEN:
            size = len(data)
            if self._pauses and not self._not_reading:
                self._stop_reading()
            self._last_heard = self.clock.seconds()
            self._metrics.bytes_in += size
            ws = self._ws
            if self._boundary.clear and not ws.expect_continuation_frame and ws.state is _WS_OPEN:
                messages, used = simple_messages(data, self.config.max_message_size)
                if messages:
                    self._events.extend(messages)
                    self._deliver()
                    if self._ending:
                        return
                    data = data[used:] if used < len(data) else b""
            if data:
                self._parse(data)
            if size > SMALL_READ and self._pauses and not self._not_reading:
                self._stop_reading()
        elif stage is Stage.HEAD:
            self._read_head(data)
        elif stage is Stage.HTTP:
            self._channel.dataReceived(data)
        elif stage is Stage.JUDGING:
            self._hold_input(data)

    def _parse(self, data: bytes) -> None:
        """Everything ``simple_messages`` leaves (control frames, fragments, partial frames, violations):
        the protocol parses it, in slices, so that a violation (too many fragments) stops the work
        within one slice instead of after parsing thousands of tiny frames."""
        ws, boundary = self._ws, self._boundary
        for start in range(0, len(data), PARSE_SLICE):
            piece = data[start:start + PARSE_SLICE] if len(data) > PARSE_SLICE else data
            boundary.feed(piece)
            ws.receive_data(piece)
            self._events.extend(cast("list[Frame]", ws.events_received()))  # once open, only frames
            self._deliver()
            self._flush()
            if self._ending:
                break

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Give back every slot and timer; an open client's last messages and its end still reach the backend."""
        stage, self.stage = self.stage, Stage.CLOSED
        self._cancel_timers()
        if self._outbox is not None:
            self._outbox.stop()
        if self._address:
            self._slots.release(self._address)
        if self._refusal is not None:
            self._counted_refusal()
        if self._status_slot:
            self.factory.release_status_slot()
        self.factory.connections.discard(self)
        if stage is Stage.HTTP:
            self._channel.connectionLost(reason)
        elif stage is Stage.OPEN:
            self._deliver(everything=True)  # what was read before the end still reaches the backend
            self.broker.client_disconnected(self)
        self.gone.callback(None)

    # -- HEAD: the request head, then a decision ------------------------------------

    def _read_head(self, data: bytes) -> None:
        head = self._head
        searched = max(0, len(head) - 3)  # a head trickled in byte by byte costs linear time
        head += data
        end = head.find(b"\r\n\r\n", searched)
        if end < 0 and len(head) <= MAX_HEAD:
            return
        if end < 0 or end + 4 > MAX_HEAD:
            self._metrics.handshake("malformed")
            self._answer(431, "the request head is too large")
            return
        self._head = bytearray()
        self._cancel_timers()
        whole, rest = bytes(head[:end + 4]), bytes(head[end + 4:])
        request_line = whole[:whole.find(b"\r\n")].split(b" ")
        if self._refusal is not None:
            status_page = (len(request_line) == 3 and request_line[0] == b"GET"
                           and request_line[1].partition(b"?")[0] in STATUS_PATHS)
            if not (status_page and self.factory.take_status_slot()):
                self._refuse_over_limit()
                return
            self._refusal = None
            self._status_slot = True
        if len(request_line) != 3 or not request_line[1].startswith(b"/ws/"):
            self._hand_to_site(whole + rest)
            return
        try:
            self._handshake(whole, rest)
        except Exception:
            log.failure("A WebSocket handshake from {address} failed", address=self._address,
                        level=LogLevel.error)
            if self.stage is Stage.HEAD:
                self._metrics.handshake("error")
                self._answer(500, "the WebSocket could not be opened")

    def _head_too_slow(self) -> None:
        self._timer = None
        self._metrics.handshake("timeout")
        log.info("Closed a WebSocket-port connection from {address}: no complete request head"
                 " within {seconds}s", address=self._address, seconds=self.config.handshake_timeout)
        self._answer(408, "the request head did not arrive in time")

    def _hand_to_site(self, data: bytes) -> None:
        """Not a WebSocket path: the web site (static files or 404) takes over this socket."""
        self.stage = Stage.HTTP
        self._channel = self._site.buildProtocol(self.transport.getPeer())
        self._channel.makeConnection(self.transport)
        self._channel.dataReceived(data)

    def _handshake(self, head: bytes, rest: bytes) -> None:
        if not head.startswith(b"GET "):  # checked here: websockets 16's parser calls any other method malformed
            self._metrics.handshake("malformed")
            self._answer(405, "a WebSocket handshake is a GET request", [("Allow", "GET")])
            return
        ws = ServerProtocol(max_size=self.config.max_message_size, logger=_QUIET)
        ws.receive_data(head)
        request = next((event for event in ws.events_received() if isinstance(event, Request)), None)
        problem = _malformed(head, request)
        if problem is not None:
            self._metrics.handshake("malformed")
            self._answer(_refusal_status(head, ws.handshake_exc), problem)
            return
        assert request is not None  # else _malformed said so
        response = ws.accept(request)
        if response.status_code != 101:
            self._metrics.handshake("malformed")
            version = request.headers.get_all("Sec-WebSocket-Version")
            if version != ["13"] and response.status_code == 400:
                self._answer(426, "this server speaks WebSocket version 13",
                             [("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")])
            else:
                extra = [(name, value) for name, value in response.headers.raw_items()
                         if name == "Upgrade"]
                self._answer(response.status_code, response.body.decode(errors="replace").strip(), extra)
            return
        origin = _single(request, "Origin")
        if not self._origins.allows(origin, _single(request, "Host")):
            log.info("Refused a WebSocket handshake from {address}: origin {origin!r} is not allowed",
                     address=self._address, origin=origin)
            self._metrics.handshake("origin")
            self._answer(403, "this origin is not allowed")
            return
        self.stage = Stage.JUDGING
        self._ws = ws
        self._held_input = rest
        self.transport.pauseProducing()  # nothing more is read until a backend has answered
        answer = self.broker.request_connection(_handshake(request, self.transport.getPeer()))
        answer.addCallbacks(self._admitted, self._refused, (response,))
        answer.addErrback(self._upgrade_failed)

    def _hold_input(self, data: bytes) -> None:
        self._held_input += data
        if len(self._held_input) > MAX_HEAD + self.config.max_message_size:
            self._held_input = b""
            self._answer(400, "too much data before the handshake was answered")

    # -- JUDGING: the backend's answer ---------------------------------------------

    def _admitted(self, admission: Admission, response: Any) -> None:
        self.admission = admission
        hung_up = self.stage is not Stage.JUDGING  # the client hung up while its backend judged
        if hung_up:
            self.broker.abandon(admission)
            return
        try:
            self._open(response)
        except Exception:
            if self.stage is Stage.OPEN:
                self.abort("opening the WebSocket failed")
            else:
                self.broker.abandon(admission)
            raise

    def _open(self, response: Any) -> None:
        ws = self._ws
        ws.send_response(response)
        self.transport.write(b"".join(ws.data_to_send()))
        self.stage = Stage.OPEN
        self._metrics.handshake("accepted")
        self._metrics.clients_opened += 1
        self._outbox = Outbox(self.transport, self.clock, limit=self.config.max_client_buffer,
                              timeout=self.config.client_write_timeout, on_fault=self._write_fault,
                              on_congestion=self._write_congestion)
        self.broker.client_connected(self)
        self._last_heard = self._last_ping = self.clock.seconds()
        self._schedule_keepalive()
        held, self._held_input = self._held_input, b""
        self.transport.resumeProducing()
        if held:
            self.dataReceived(held)

    def _refused(self, failure: Failure) -> None:
        failure.trap(HandshakeRefused)
        refusal = cast(HandshakeRefused, failure.value)
        if self.stage is Stage.JUDGING:
            self._answer(refusal.status, refusal.reason)

    def _upgrade_failed(self, failure: Failure) -> None:
        """Anything unexpected while upgrading: 500 if nothing was sent yet, every slot given back."""
        log.error("Upgrading a WebSocket handshake from {address} failed: {why}",
                  address=self._address, why=failure.getTraceback())
        if self.stage is Stage.JUDGING:
            self._metrics.handshake("error")
            self._answer(500, "the WebSocket could not be opened")

    # -- OPEN: messages in, with the reasons to stop reading -----------------------

    def _deliver(self, everything: bool = False) -> None:
        """Hand complete messages to the router until one has to wait (unless ``everything``)."""
        events, pauses = self._events, self._pauses
        while events and (everything or not (pauses and ("backend" in pauses or "rate" in pauses))):
            event = events[0]
            if isinstance(event, str):
                fin = True
            elif event.opcode in _DATA_OPCODES:
                fin = event.fin
            else:
                events.popleft()
                continue
            if self._rate is not None and fin and not everything:
                wait = self._rate.take()
                if wait:
                    self._pause("rate")
                    self._rate_wait = self.clock.callLater(wait, self._resume, "rate")
                    return
            events.popleft()
            if isinstance(event, str):
                message: str | None = event
            else:
                try:
                    message = self._assembler.add(event)
                except TooManyFragments as exc:
                    self._fail(MESSAGE_TOO_BIG, str(exc))
                    return
                except UnicodeDecodeError:
                    self._fail(1007, "a text message that is not UTF-8")
                    return
            if message is not None and not self.broker.client_message(self, message) and not everything:
                self._pause("backend")

    def go_on(self) -> None:
        """The router's word: this client's backend drained."""
        self._resume("backend")

    def _write_congestion(self, congested: bool) -> None:
        """While this client does not read what it is sent, the broker does not read what it sends."""
        if congested:
            self._pause("writes")
        else:
            self._resume("writes")

    def _pause(self, reason: str) -> None:
        """Hold this client's messages for ``reason``; reading stops at the end of a read over
        ``SMALL_READ`` bytes, else at the next read if the wait lasts that long.

        Most waits end within the reactor's next turn (a backend's socket drains), and pausing and
        resuming a transport costs two ``epoll_ctl`` calls: stopping a client of small reads at its
        next read spares those calls for the waits that end first, and bounds what waits to one small
        read more. A busy client (big reads) stops at once, so that its next read does not go ahead
        of other clients' messages when the backend drains.
        """
        self._pauses.add(reason)

    def _stop_reading(self) -> None:
        self._not_reading = True
        self.transport.pauseProducing()

    def _read_again(self) -> None:
        if self._not_reading:
            self._not_reading = False
            self.transport.resumeProducing()

    def _resume(self, reason: str) -> None:
        if reason not in self._pauses or self.stage is not _OPEN:
            return
        self._pauses.discard(reason)
        if reason == "rate":
            self._rate_wait = None
        self._deliver()
        if not self._pauses:
            self._read_again()
        self._flush()

    def _fail(self, code: int, reason: str) -> None:
        log.info("Closed {client}: {reason}", client=self, reason=reason)
        self._events.clear()
        self._ws.fail(code, reason)
        self._flush()

    # -- keep-alive ----------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        ping, idle = self.config.ping_interval, self.config.client_idle_timeout
        deadlines = ([self._last_ping + ping] if ping else []) + ([self._last_heard + idle] if idle else [])
        if deadlines:
            delay = max(0.0, min(deadlines) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        now, config = self.clock.seconds(), self.config
        if self._pauses:
            self._last_heard = now  # unread data may be waiting: silence is the broker's doing
        if config.client_idle_timeout and now - self._last_heard >= config.client_idle_timeout:
            log.info("Closed {client}: nothing heard for {seconds}s", client=self,
                     seconds=config.client_idle_timeout)
            self.close(GOING_AWAY, "idle timeout")
            return
        if config.ping_interval and now - self._last_ping >= config.ping_interval:
            self._last_ping = now
            if self._ws.state is State.OPEN:
                self._ws.send_ping(b"")
                self._flush()
        self._schedule_keepalive()

    # -- Client (for the router) ------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once either side began closing (nothing may be sent any more)."""
        return self.stage is not Stage.OPEN or self._ws.state is not State.OPEN

    def send_text(self, message: str) -> None:
        """Send a text message (held while the socket is full; past the limit, the client is dropped).

        The frame is built here rather than by the protocol: a server's text
        frame is a header and the bytes (no mask, no extension is negotiated),
        and a room's members share one frame (``WebSocketFactory.text_frame``).
        Whatever the protocol queues (pongs, closes) is flushed where it is
        queued, so nothing of its own waits behind this frame.
        """
        outbox = self._outbox
        if outbox is not None and self.stage is _OPEN and self._ws.state is _WS_OPEN:
            frame = self.factory.text_frame(message)
            self._metrics.bytes_out += len(frame)
            outbox.write(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the client has ``handshake_timeout`` to answer."""
        if self.closing:
            return
        self._ws.send_close(code, reason)
        self._flush()
        self._expect_end()

    def abort(self, why: str) -> None:
        """Cut the connection at once (no close frame can get through a full buffer)."""
        if self.stage is Stage.CLOSED:
            return
        log.warn("Dropped {client}: {why}", client=self, why=why)
        if self._outbox is not None:
            self._outbox.stop()
        self.transport.abortConnection()

    def _write_fault(self, why: str) -> None:
        """Its socket would not take what it is sent: drop the client, and count it."""
        self._metrics.client_write_drops += 1
        self.abort(why)

    def _flush(self) -> None:
        """Pass what the protocol wants to send to the outbox; an empty chunk means close."""
        outbox = self._outbox
        assert outbox is not None  # made on opening, before anything is sent
        for data in self._ws.data_to_send():
            if data:
                self._metrics.bytes_out += len(data)
                outbox.write(data)
            else:
                outbox.close(half=True)
                self._expect_end()

    def _expect_end(self) -> None:
        """Closing: read on (to see the client's answer or FIN), for ``handshake_timeout`` at most."""
        if self._ending:
            return
        self._ending = True
        self._pauses.clear()
        self._read_again()
        self._cancel_timers()
        self._timer = self.clock.callLater(self.config.handshake_timeout, self.abort,
                                           "it did not finish closing in time")

    # -- endings -------------------------------------------------------------------

    def _answer(self, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """An HTTP response that refuses the request, then the end of what this side sends (see ``Stage.REFUSED``)."""
        self.stage = Stage.REFUSED
        self._cancel_timers()
        self.transport.write(http_response(status, text, headers))
        self.transport.resumeProducing()  # read on (and drop) until the client hangs up
        end_sending(self.transport)
        self._timer = self.clock.callLater(REFUSAL_LINGER, self.transport.abortConnection)

    def _cancel_timers(self) -> None:
        for call in (self._timer, self._rate_wait):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._rate_wait = None


def simple_messages(data: bytes, max_size: int) -> tuple[list[str], int]:
    """The messages of the whole, final, masked frames of at most ``max_size`` bytes at the start of ``data``
    (text that is UTF-8, or binary: decoded as the parser's would be), and the bytes their frames take.

    This is the common case, read here in a few operations per frame; the
    first frame that is anything else (a control frame, a fragment, a reserved
    bit, no mask, too big, incomplete, text that is not UTF-8) and all after it
    go to the protocol, which enforces every rule. Call only between frames,
    outside a fragmented message, while the protocol is open.
    """
    messages: list[str] = []
    at, end = 0, len(data)
    while end - at >= 6:
        first, second = data[at], data[at + 1]
        if (first != 0x81 and first != 0x82) or second < 0x80:  # FIN, no RSV, text or binary; masked
            break
        length, start = second & 0x7F, at + 6
        if length == 126:
            if end - at < 8:
                break
            length, start = (data[at + 2] << 8) | data[at + 3], at + 8
        elif length == 127:
            break
        if length > max_size or start + length > end:
            break
        payload = apply_mask(data[start:start + length], data[start - 4:start])
        try:
            messages.append(decode_message(payload, first == 0x81))
        except UnicodeDecodeError:
            break
        at = start + length
    return messages, at


class FrameBoundary:
    """Follows the frame headers of the bytes given to the protocol, to tell when it stands between two frames."""

    def __init__(self) -> None:
        self._head = b""  # the start of a frame whose header is not complete yet
        self._owed = 0  # payload bytes of the current frame still to come
        #: True when every frame given so far is complete.
        self.clear = True

    def feed(self, data: bytes) -> None:
        """Account for ``data``, given to the protocol after what was fed before."""
        if self._owed >= len(data):
            self._owed -= len(data)
            self.clear = not self._owed
            return
        buffer = self._head + data[self._owed:] if self._head or self._owed else data
        at, end = 0, len(buffer)
        while end - at >= 2:
            second = buffer[at + 1]
            length = second & 0x7F
            size = 2 + (4 if second & 0x80 else 0) + (2 if length == 126 else 8 if length == 127 else 0)
            if end - at < size:
                break
            if length == 126:
                length = int.from_bytes(buffer[at + 2:at + 4], "big")
            elif length == 127:
                length = int.from_bytes(buffer[at + 2:at + 10], "big")
            if at + size + length > end:
                self._head, self._owed = b"", at + size + length - end
                self.clear = False
                return
            at += size + length
        self._head, self._owed = buffer[at:], 0
        self.clear = not self._head


def http_response(status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response with a plain-text body, and ``Connection: close``."""
    body = text.encode() + b"\n"
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
             f"Date: {formatdate(usegmt=True)}", "Connection: close",
             "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers)]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


#: Headers of an unmasked, final text frame: with a 7-bit length, then the 16-bit and 64-bit length prefixes.
_SHORT_HEADERS = [bytes((0x81, length)) for length in range(126)]
_TEXT_16 = bytes((0x81, 126))
_TEXT_64 = bytes((0x81, 127))


def _refusal_status(head: bytes, error: Exception | None) -> int:
    """414 or 431 when the parser refused the head for a line or the number of headers over its
    limits, else 400. websockets 17 raises a ``SecurityError`` subclass per limit; 16 wraps a plain
    ``SecurityError`` in ``InvalidMessage``, so the request line's length tells which limit it was."""
    cause = error.__cause__ if isinstance(error, InvalidMessage) else error
    if not isinstance(cause, SecurityError):
        return 400
    return 414 if head.find(b"\r\n") + 2 > MAX_LINE_LENGTH else 431


def _malformed(head: bytes, request: Request | None) -> str | None:
    """Why a handshake request is not well formed, before any backend sees it; None if it is."""
    if request is None:
        return "not a valid HTTP request (a line or the number of headers may be over the limit)"
    request_line = head[:head.find(b"\r\n")]
    if not request_line.endswith(b" HTTP/1.1"):
        return "a WebSocket handshake needs HTTP/1.1"
    target = request_line.split(b" ")[1]
    if any(byte <= 0x20 or byte >= 0x7F for byte in target):
        return "the request target has a byte that is not printable ASCII"
    hosts = request.headers.get_all("Host")
    if len(hosts) != 1 or not hosts[0].strip():
        return "a request needs exactly one Host header"
    return None


def _single(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None if not values else ""


def _canonical(name: str) -> str:
    """A header name in the reference broker's (Go's) canonical form: ``Sec-Websocket-Key``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _handshake(request: Request, address: Any) -> Handshake:
    headers: dict[str, list[str]] = {}
    for raw_name, value in request.headers.raw_items():
        name = _canonical(raw_name)
        if name != "Host":
            headers.setdefault(name, []).append(value)
    host, port = getattr(address, "host", "?"), getattr(address, "port", 0)
    remote_addr = f"[{host}]:{port}" if isinstance(address, IPv6Address) else f"{host}:{port}"
    path, _, query = request.path.partition("?")
    return Handshake(headers=headers, url=unquote(path), remote_addr=remote_addr,
                     query=parse_qs(query, keep_blank_values=True))


@implementer(IProtocolNegotiationFactory)
class WebSocketFactory(Factory[ClientConnection]):
    """The WebSocket port: ``/ws/...`` upgrades, ``/pystrands.js``, ``/healthz``, ``/readyz``, ``/metrics``
    (with ``metrics`` and no ``metrics_endpoint``), the ``static`` folder (if any), else 404."""

    noisy = False

    def __init__(self, broker: Broker) -> None:
        config = broker.config
        self.broker = broker
        self.slots = AddressSlots(config.max_clients, config.max_clients_per_address)
        self.origins = OriginPolicy(config.allowed_origins)
        #: Every open socket of the port, whatever its stage.
        self.connections: set[ClientConnection] = set()
        if config.static is not None:
            from .static import StaticFolder  # imported only when a folder is served

            root: Any = StaticFolder(config.static)
        else:
            root = pages.notFound()
        root.putChild(PATH, ClientScript())  # the broker's browser client wins over a static folder's file
        # /metrics here unless it has a listener of its own
        add_status_pages(root, broker, metrics=config.metrics and config.metrics_endpoint is None)
        # Idle HTTP keep-alive sockets (static files) hold a slot: close them as idle WebSockets are.
        self.site = QuietSite(root, timeout=config.client_idle_timeout or config.handshake_timeout,
                              reactor=broker.clock)
        self._last_frame: tuple[str | None, bytes] = (None, b"")
        self._status_slots_taken = 0
        #: Warns of a socket refused over a limit: the first at once, then at most one a second (a flood of
        #: connections is counted in ``handshakes_total{outcome="over_limit"}``, not logged line by line).
        self.refused_over_limit = ThrottledWarning(
            log, broker.clock, "Refused a WebSocket-port connection: {why}",
            held_format="Refused {held_back} more WebSocket-port connections since the last warning (the last: {why})")

    def stopFactory(self) -> None:
        """The port stopped listening: log the refusals the throttled warning still held back."""
        self.refused_over_limit.flush()

    def acceptableProtocols(self) -> list[bytes]:
        """The TLS (ALPN) protocol of the port: HTTP/1.1, which WebSocket handshakes ride on. Twisted's TLS
        selects among these for a client that offers some, as every browser does: without them, the TLS
        handshake of such a client failed (an internal-error alert)."""
        return [b"http/1.1"]

    def take_status_slot(self) -> bool:
        """Take one of the ``STATUS_RESERVE`` slots of sockets over the limits that GET a status page."""
        if self._status_slots_taken >= STATUS_RESERVE:
            return False
        self._status_slots_taken += 1
        return True

    def release_status_slot(self) -> None:
        """Give back a status page's slot (its socket closed)."""
        self._status_slots_taken -= 1

    def text_frame(self, message: str) -> bytes:
        """``message`` as a server's unfragmented text frame; the last one is kept for the next client it goes to."""
        last_message, last_frame = self._last_frame
        if message is last_message:
            return last_frame
        payload = message.encode()
        length = len(payload)
        if length < 126:
            header = _SHORT_HEADERS[length]
        elif length < 65536:
            header = _TEXT_16 + length.to_bytes(2, "big")
        else:
            header = _TEXT_64 + length.to_bytes(8, "big")
        frame = header + payload
        self._last_frame = (message, frame)  # holding the message keeps its identity from being reused
        return frame

    def buildProtocol(self, addr: Any) -> ClientConnection:
        """A :class:`ClientConnection` for a new socket on the WebSocket port."""
        connection = ClientConnection(self.broker, self.slots, self.origins, self.site)
        connection.factory = self
        return connection

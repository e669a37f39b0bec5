"""The WebSocket side of the broker, on Twisted's own ``twisted.web.websocket``.

``twisted.web.websocket`` (chosen by ``benchmarks/websocket_impl.py``) gives
binary frames and close codes (``loseConnection(code)``, so 1001 and 1009).
It upgrades synchronously inside ``render_GET`` and has no message size
limit; this module adds both on public Twisted APIs:

* Deferred handshake decision, HTTP errors before any upgrade:
  :class:`WebSocketGate` answers ``NOT_DONE_YET``, asks a backend through
  the router, then either writes an HTTP 403/409/503 response or hands the
  request to a ``WebSocketResource`` for the upgrade.
* Message size limit without buffering: the site's connections are wrapped
  (``policies.WrappingFactory``) in :class:`GuardedChannel`, which after
  the upgrade follows the frame headers of the client's byte stream
  (:class:`MessageSizeGuard`) and closes with 1009 as soon as a header
  announces a message bigger than the limit, before its payload arrives.
* Bounded writes: each client registers as the request's push producer, so
  it learns when its socket's send buffer is full and drops itself past
  ``max_client_buffer`` characters queued.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

from .router import Admission, Broker, Handshake, HandshakeRefused

__all__ = ["ClientConnection", "GuardedChannel", "MessageSizeGuard", "WebSocketGate", "websocket_site"]

log = Logger()

GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009


class MessageSizeGuard:
    """Follows a client's WebSocket frame headers to size each message, sans I/O.

    Only headers are read (2 to 14 bytes a frame); payloads are skipped by
    count. Control frames (opcode >= 8) do not count toward a message.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.exceeded = False
        self._header = bytearray()
        self._payload_left = 0
        self._message_size = 0

    def accept(self, data: bytes) -> int:
        """How many leading bytes of ``data`` stay within the limit (all, unless exceeded)."""
        if self.exceeded:
            return 0
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            frame_start = pos if not self._header else 0
            header = self._header
            need = _header_length(header)
            while pos < end and len(header) < need:
                taken = data[pos:pos + need - len(header)]
                header += taken
                pos += len(taken)
                need = _header_length(header)  # the first two bytes tell how long the rest is
            if len(header) < need:
                break
            opcode, final, length = header[0] & 0x0F, header[0] & 0x80, header[1] & 0x7F
            if length >= 126:
                length = int.from_bytes(header[2:4] if length == 126 else header[2:10], "big")
            header.clear()
            if opcode < 8:
                self._message_size += length
                if self._message_size > self.limit:
                    self.exceeded = True
                    return frame_start
                if final:
                    self._message_size = 0
            self._payload_left = length
        return end


def _header_length(header: bytearray) -> int:
    """Bytes of a frame header, as far as known from its first bytes."""
    if len(header) < 2:
        return 2
    length = header[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


class GuardedChannel(ProtocolWrapper):
    """Wraps an HTTP connection; once upgraded, enforces the message size limit."""

    _guard: MessageSizeGuard | None = None

    def limit_messages(self, limit: int, on_exceeded: Any) -> None:
        """From now on, stop passing data on and call ``on_exceeded()`` at a message over ``limit``."""
        self._guard = MessageSizeGuard(limit)
        self._on_exceeded = on_exceeded

    def loseConnection(self) -> None:
        """Close once written, even if the socket was paused when the close began.

        After the upgrade, ``twisted.web.websocket`` closes this transport
        directly, not through ``HTTPChannel.loseConnection``, so the channel
        stays registered as the socket's producer; a socket that was paused
        then never closes (Twisted resumes the producer instead). Unregister
        it first, as ``HTTPChannel.loseConnection`` does.
        """
        if self._guard is not None:
            self.transport.unregisterProducer()
        super().loseConnection()

    def dataReceived(self, data: bytes) -> None:
        guard = self._guard
        if guard is None:
            self.wrappedProtocol.dataReceived(data)
            return
        if guard.exceeded:
            return
        allowed = guard.accept(data)
        if allowed:
            self.wrappedProtocol.dataReceived(data if allowed == len(data) else data[:allowed])
        if guard.exceeded:
            self._on_exceeded()


@implementer(IPushProducer)
class ClientConnection:
    """One WebSocket client: a ``WebSocketProtocol`` for Twisted, a ``Client`` for the router."""

    def __init__(self, broker: Broker, admission: Admission, channel: GuardedChannel) -> None:
        self.broker = broker
        self.admission = admission
        self._channel = channel
        self._buffer_limit = broker.config.max_client_buffer
        self._ws: WebSocketTransport | None = None
        self._closing = False
        self._paused = False
        self._unflushed = 0
        #: Fires once the connection is gone.
        self.gone: Deferred[None] = Deferred()

    # -- WebSocketProtocol ---------------------------------------------------

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._ws = transport

    def negotiationFinished(self) -> None:
        self.broker.client_connected(self)

    def textMessageReceived(self, message: str) -> None:
        if not self.closing:
            self.broker.client_message(self, message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        """Binary messages reach backends as strings, as with the reference broker."""
        self.textMessageReceived(data.decode("utf-8", "replace"))

    def pongReceived(self, payload: bytes) -> None:
        """Pongs carry nothing for the backend."""

    def connectionLost(self, reason: Failure) -> None:
        self._closing = True
        self.broker.client_disconnected(self)
        self.gone.callback(None)

    # -- Client (for the router) ----------------------------------------------

    @property
    def closing(self) -> bool:
        """True once either side began closing (nothing may be sent any more)."""
        return self._closing or bool(self._channel.disconnecting)

    def send_text(self, message: str) -> None:
        """Send a text message, or drop this client if too much already waits to be written."""
        if self.closing:
            return
        if self._paused:
            self._unflushed += len(message)
            if self._unflushed > self._buffer_limit:
                self.abort(f"more than {self._buffer_limit} characters wait to be written")
                return
        self._ws.sendTextMessage(message)

    def close(self, code: int) -> None:
        """Send a close frame with ``code`` and close once it is written."""
        if not self.closing:
            self._closing = True
            self._ws.loseConnection(code)

    def abort(self, why: str) -> None:
        """Cut the connection at once (no close frame can get through a full buffer)."""
        log.warn("Dropped WebSocket client {client_id!r}: {why}",
                 client_id=self.admission.client_id, why=why)
        self._closing = True
        self._channel.abortConnection()

    def message_too_big(self) -> None:
        log.info("Closed WebSocket client {client_id!r}: a message over {limit} bytes",
                 client_id=self.admission.client_id, limit=self.broker.config.max_message_size)
        self.close(MESSAGE_TOO_BIG)

    # -- IPushProducer: told by the socket when its send buffer fills and drains ----

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._unflushed = 0

    def stopProducing(self) -> None:
        """Nothing to stop: the connection is going away."""


class _Prepared:
    """A WebSocketServerFactory that hands out one protocol built beforehand."""

    def __init__(self, protocol: ClientConnection) -> None:
        self.protocol = protocol

    def buildProtocol(self, request: Request) -> ClientConnection:
        return self.protocol


class WebSocketGate(Resource):
    """Every path under ``/ws/``: a handshake judged by a backend, then the upgrade."""

    isLeaf = True

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    def render_GET(self, request: Request) -> bytes | int:
        if not request.path.startswith(b"/ws/"):
            return _error(request, 404, "not found")
        if not _is_handshake(request):
            return _error(request, 400, "a WebSocket handshake is expected here")
        finished = request.notifyFinish()
        finished.addErrback(lambda _: None)  # the client hung up; seen through finished.called
        answer = self.broker.request_connection(_handshake(request))
        answer.addCallbacks(self._upgrade, self._refuse, (request, finished), None, (request, finished))
        answer.addErrback(lambda failure: log.failure("Handshake of {path} failed", failure,
                                                      path=request.path))
        return NOT_DONE_YET

    def _upgrade(self, admission: Admission, request: Request, finished: Deferred[None]) -> None:
        if finished.called:
            self.broker.abandon(admission)
            return
        channel = request.channel.transport
        client = ClientConnection(self.broker, admission, channel)
        result = WebSocketResource(_Prepared(client)).render_GET(request)
        if result is not NOT_DONE_YET:
            self.broker.abandon(admission)
            request.write(result)
            request.finish()
            return
        request.registerProducer(client, True)
        channel.limit_messages(self.broker.config.max_message_size, client.message_too_big)

    def _refuse(self, failure: Failure, request: Request, finished: Deferred[None]) -> None:
        failure.trap(HandshakeRefused)
        refusal: HandshakeRefused = failure.value
        if not finished.called:
            request.write(_error(request, refusal.status, refusal.reason))
            request.finish()


def _error(request: Request, status: int, reason: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return reason.encode() + b"\n"


def _is_handshake(request: Request) -> bool:
    """A well-formed WebSocket upgrade request (anything else gets HTTP 400, not a backend's time)."""
    def tokens(name: bytes) -> set[bytes]:
        value = request.getHeader(name) or b""
        return {token.strip().lower() for token in value.split(b",")}

    return (b"websocket" in tokens(b"upgrade") and b"upgrade" in tokens(b"connection")
            and bool(request.getHeader(b"sec-websocket-key"))
            and request.getHeader(b"sec-websocket-version") == b"13")


def _canonical(name: str) -> str:
    """A header name in the reference broker's (Go's) canonical form: ``Sec-Websocket-Key``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _handshake(request: Request) -> Handshake:
    headers: dict[str, list[str]] = {}
    for raw_name, raw_values in request.requestHeaders.getAllRawHeaders():
        name = _canonical(raw_name.decode("latin-1"))
        if name != "Host":
            headers.setdefault(name, []).extend(value.decode("utf-8", "replace") for value in raw_values)
    address = request.getClientAddress()
    host, port = getattr(address, "host", "?"), getattr(address, "port", 0)
    remote_addr = f"[{host}]:{port}" if isinstance(address, IPv6Address) else f"{host}:{port}"
    query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
    return Handshake(
        headers=headers,
        url=unquote(request.path.decode("utf-8", "replace")),
        remote_addr=remote_addr,
        query=parse_qs(query, keep_blank_values=True),
    )


def websocket_site(broker: Broker) -> WrappingFactory:
    """The WebSocket port's factory: ``/ws/...`` upgrades, the ``static`` folder (if any) at ``/``, else 404."""
    static = broker.config.static
    if static is not None:
        from .static import StaticFolder  # imported only when used: twisted.web.static warns on import

        root = StaticFolder(static)
    else:
        root = pages.notFound()
    root.putChild(b"ws", WebSocketGate(broker))
    site = Site(root, reactor=broker.clock)
    factory = WrappingFactory(site)
    factory.protocol = GuardedChannel
    site.noisy = factory.noisy = False
    return factory

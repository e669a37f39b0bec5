"""Refusals and closes over TLS: the client reads the whole answer or close frame, then the end of the TLS stream.

A refusal is answered, then the broker stops sending but reads on, so
that the client reads the answer instead of a reset. Over TLS that end
must be TLS's own (close_notify after the answer): the TLS wrapper passes
``loseWriteConnection`` through to the socket beneath it, and a FIN sent
there could go before the answer, which Twisted's TLS holds until the
reactor's next turn (about one refusal in 200 lost its answer).

The first tests run Twisted's TLS over an in-memory socket on a ``Clock``,
against a client on the standard library's ``ssl`` (memory BIOs): each
step happens in the order that lost the answer, every time. The last ones
use real sockets on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from pystrands import wire
from pystrands.broker.config import BrokerConfig
from pystrands.broker.router import Broker
from pystrands.broker.websocket import REFUSAL_LINGER, WebSocketFactory
from tests.broker.conftest import RunningBroker
from tests.broker.test_websocket_stages import FakeBackend, HttpAnswer, close_code, close_frame, parse_frames, request_head
from tests.reliability.test_hostile_clients import self_signed

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key.pem, cert.pem): a self-signed certificate for 127.0.0.1."""
    key, cert, _ = self_signed(tmp_path_factory.mktemp("tls"))
    return key, cert


# -- in memory ---------------------------------------------------------------------------


class Socket(StringTransport):
    """A TCP socket in memory. Once its sending side is closed, what is written goes nowhere: the FIN
    went at once, as it does when the socket had nothing queued (a real socket drops such writes too)."""

    write_closed = False

    def write(self, data: bytes) -> None:
        if not self.write_closed:
            super().write(data)

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class TLSClient:
    """A TLS client (the standard library's) talking to one broker socket through memory BIOs."""

    def __init__(self, server: TLSMemoryBIOProtocol, sock: Socket, clock: Clock, cert: Path) -> None:
        self.server, self.socket, self.clock = server, sock, clock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        #: The broker's socket stopped sending: the client has read its end of file.
        self._cut = False
        context = ssl.create_default_context(cafile=str(cert))
        self.tls = context.wrap_bio(self._in, self._out, server_hostname=HOST)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._exchange()

    def _exchange(self) -> None:
        """What the client sent reaches the broker; the reactor turns; what the broker sent reaches the client."""
        sent = self._out.read()
        if sent:
            self.server.dataReceived(sent)
        self.clock.advance(0)
        if not self._cut:
            self._in.write(self.socket.value())
            self.socket.clear()
            self._cut = self.socket.write_closed or self.socket.disconnecting
            if self._cut:
                self._in.write_eof()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._exchange()

    def receive(self) -> tuple[bytes, str]:
        """Everything the broker sent so far, and how its stream stands: "open", "close_notify" or "eof"
        (the socket closed without close_notify: a truncated stream)."""
        self._exchange()
        data = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return data, "open"
            except ssl.SSLEOFError:
                return data, "eof"
            if not chunk:
                return data, "close_notify"
            data += chunk

    def end(self) -> None:
        """Answer the broker's close_notify with the client's own."""
        self.tls.unwrap()
        self._exchange()


class TLSHarness:
    """A broker on a Clock (no backend unless told), its WebSocket factory behind Twisted's TLS."""

    def __init__(self, cert: tuple[Path, Path], **options: Any) -> None:
        key, certificate = cert
        self.cert = certificate
        self.clock = Clock()
        self.broker = Broker(BrokerConfig(**options), self.clock)
        self.factory = WebSocketFactory(self.broker)
        options_ = PrivateCertificate.loadPEM(certificate.read_text() + key.read_text()).options()
        self.tls_factory = TLSMemoryBIOFactory(options_, False, self.factory, clock=self.clock)
        self._ports = itertools.count(40000)

    def connect(self) -> tuple[TLSClient, Socket, TLSMemoryBIOProtocol]:
        """A socket through its TLS handshake: the client, the broker's socket and its TLS transport."""
        peer = IPv4Address("TCP", "192.0.2.10", next(self._ports))
        sock = Socket(peerAddress=peer, lenient=True)
        server = self.tls_factory.buildProtocol(peer)
        assert server is not None
        server.makeConnection(sock)
        return TLSClient(server, sock, self.clock, self.cert), sock, server


def _sends(head: bytes) -> Callable[[TLSHarness], TLSClient]:
    """A refusal case: a client that sends ``head``."""
    def refused(h: TLSHarness) -> TLSClient:
        client = h.connect()[0]
        client.send(head)
        return client
    return refused


def _over_the_limit(h: TLSHarness) -> TLSClient:
    h.connect()  # takes the one slot
    return _sends(request_head())(h)


def _late_head(h: TLSHarness) -> TLSClient:
    client = _sends(request_head()[:20])(h)
    h.clock.advance(h.broker.config.handshake_timeout)
    return client


#: (name, broker options, a client refused, the status it gets): every kind of refusal.
REFUSALS: list[tuple[str, dict[str, Any], Callable[[TLSHarness], TLSClient], int]] = [
    ("no-backend", {}, _sends(request_head()), 503),
    ("origin", {}, _sends(request_head(extra=[("Origin", "https://elsewhere.test")])), 403),
    ("malformed", {}, _sends(request_head(change={"Host": None})), 400),
    ("version", {}, _sends(request_head(change={"Sec-WebSocket-Version": "8"})), 426),
    ("method", {}, _sends(request_head(method="POST")), 405),
    ("max-clients", {"max_clients": 1}, _over_the_limit, 503),
    ("per-address", {"max_clients_per_address": 1}, _over_the_limit, 429),
    ("head-timeout", {}, _late_head, 408),
]


@pytest.mark.parametrize(("options", "refuse", "status"), [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
def test_a_refusal_over_tls_reaches_the_client_whole_then_close_notify(
        certificate: tuple[Path, Path], options: dict[str, Any],
        refuse: Callable[[TLSHarness], TLSClient], status: int) -> None:
    """Every refusal: the whole answer, then the TLS stream's end; the socket beneath stays open for reading."""
    h = TLSHarness(certificate, **options)
    client = refuse(h)
    sock = client.socket
    data, end = client.receive()
    assert (data[:13], end) == (f"HTTP/1.1 {status} ".encode(), "close_notify"), data
    answer = HttpAnswer(data)
    assert len(answer.body) == int(answer.headers["content-length"][0])
    assert not sock.write_closed and not sock.disconnecting
    assert sock.producerState == "producing"  # read on, or the client's end is never seen


def test_the_clients_end_closes_the_socket_and_gives_back_its_slot(certificate: tuple[Path, Path]) -> None:
    """What the client sends after the refusal is read and dropped; its close_notify closes the socket."""
    h = TLSHarness(certificate)
    client, sock, server = h.connect()
    client.send(request_head() + b"more bytes behind the head")
    client.send(b"and later ones")
    assert client.receive()[0].startswith(b"HTTP/1.1 503 ")
    assert not sock.disconnecting
    client.end()
    assert sock.disconnecting
    server.connectionLost(Failure(ConnectionDone()))
    assert len(h.factory.slots) == 0 and not h.factory.connections


def test_a_client_that_never_ends_its_stream_is_cut_after_the_refusal_linger(
        certificate: tuple[Path, Path]) -> None:
    """A client that neither reads nor closes holds its socket and slot REFUSAL_LINGER seconds at most."""
    h = TLSHarness(certificate)
    client, sock, server = h.connect()
    client.send(request_head())
    h.clock.advance(REFUSAL_LINGER - 0.1)
    assert not sock.disconnecting
    h.clock.advance(0.1)
    assert sock.disconnecting
    server.connectionLost(Failure(ConnectionDone()))
    assert len(h.factory.slots) == 0 and not h.factory.connections


def test_a_websocket_close_over_tls_reaches_the_client_then_close_notify(certificate: tuple[Path, Path]) -> None:
    """The close handshake ends the same way: the broker's close frame, then close_notify (not a FIN beneath)."""
    h = TLSHarness(certificate)
    backend = FakeBackend()
    h.broker.backend_ready(backend)
    client, sock, _ = h.connect()
    client.send(request_head())
    request = backend.decoded(wire.CONNECTION_REQUEST)[-1]
    line = wire.response_frame(request["request_id"], True, "alice", "lobby", None)
    h.broker.backend_frame(wire.decode_frame(line), line, backend)
    data, end = client.receive()
    assert data.startswith(b"HTTP/1.1 101 ") and end == "open"
    client.send(close_frame(1000, "bye"))
    data, end = client.receive()
    frames = parse_frames(data)
    assert [close_code(frame) for frame in frames] == [1000] and end == "close_notify"
    assert not sock.write_closed and sock.producerState == "producing"


# -- real sockets ------------------------------------------------------------------------


@pytest.fixture
def tls_broker(start_broker: Callable[..., RunningBroker], certificate: tuple[Path, Path]) -> RunningBroker:
    """A broker whose WebSocket port is TLS, with no backend (each handshake gets 503)."""
    key, cert = certificate
    return start_broker(ws_endpoint=f"ssl:0:interface={HOST}:privateKey={key}:certKey={cert}")


def _tls_socket(port: int, cert: Path) -> ssl.SSLSocket:
    """A TLS client socket on the broker's port; a stream cut without close_notify raises SSLEOFError."""
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection((HOST, port), timeout=5)
    return context.wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False)


def test_200_refusals_over_tls_on_real_sockets_each_get_their_503(
        tls_broker: RunningBroker, certificate: tuple[Path, Path]) -> None:
    """Each client reads its whole answer and then close_notify, never a cut or a reset; every socket is
    gone soon after its client hung up (well within REFUSAL_LINGER)."""
    head = request_head(change={"Host": f"{HOST}:{tls_broker.ws_port}"})
    outcomes: dict[str, int] = {}
    for _ in range(200):
        with _tls_socket(tls_broker.ws_port, certificate[1]) as conn:
            conn.sendall(head)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                outcome = data.split(b"\r\n", 1)[0].decode("latin-1")
            except OSError as error:
                outcome = f"{data[:12]!r}, then {error!r}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes == {"HTTP/1.1 503 Service Unavailable": 200}
    factory = tls_broker.service.websockets
    assert factory is not None
    tls_broker.thread.wait_for(lambda: not factory.connections,
                               "the refused sockets to close", timeout=REFUSAL_LINGER / 2)


def test_a_tls_client_that_never_reads_its_refusal_holds_no_slot_past_the_linger(
        tls_broker: RunningBroker, certificate: tuple[Path, Path]) -> None:
    conn = _tls_socket(tls_broker.ws_port, certificate[1])
    try:
        conn.sendall(request_head())
        started = time.monotonic()
        factory = tls_broker.service.websockets
        assert factory is not None
        tls_broker.thread.wait_for(lambda: len(factory.connections) == 1, "the refused socket")
        tls_broker.thread.wait_for(lambda: not factory.connections and len(factory.slots) == 0,
                                   "the refused socket to be cut", timeout=REFUSAL_LINGER + 2)
        assert time.monotonic() - started >= REFUSAL_LINGER - 0.5
    finally:
        conn.close()

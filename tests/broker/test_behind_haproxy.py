"""end_sending() behind a non-TLS protocol wrapper: a refusal or a WebSocket close half-closes the socket.

``ws_endpoint`` takes any Twisted server endpoint string, ``haproxy:tcp:...``
included (a broker behind a load balancer speaking the PROXY protocol). There
the protocol's transport is Twisted's ``HAProxyProtocolWrapper``, a
``ProtocolWrapper`` that passes ``loseWriteConnection`` on to the TCP socket
beneath it through ``__getattr__``: plain TCP, so the half-close is the right
ending, made with the method of the socket beneath the wrapper.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

from pystrands import wire
from pystrands.broker.config import BrokerConfig
from pystrands.broker.router import Broker
from pystrands.broker.websocket import WebSocketFactory
from tests.broker.conftest import RunningBroker
from tests.broker.test_tls_refusals import HOST, Socket
from tests.broker.test_websocket_stages import FakeBackend, close_frame, request_head

PROXY_HEADER = b"PROXY TCP4 198.51.100.7 192.0.2.1 51000 8080\r\n"


def _behind_haproxy(backend: FakeBackend | None = None) -> tuple[Socket, Broker, IProtocol]:
    """A broker on a Clock whose WebSocket factory is behind Twisted's HAProxy wrapper, and one socket."""
    broker = Broker(BrokerConfig(), Clock())
    if backend is not None:
        broker.backend_ready(backend)
    wrapping = HAProxyWrappingFactory(WebSocketFactory(broker))
    peer = IPv4Address("TCP", "192.0.2.10", 40000)
    sock = Socket(peerAddress=peer, lenient=True)
    protocol = wrapping.buildProtocol(peer)
    assert protocol is not None
    protocol.makeConnection(sock)
    protocol.dataReceived(PROXY_HEADER + request_head())
    return sock, broker, protocol


def test_a_refusal_behind_haproxy_half_closes_the_tcp_socket() -> None:
    """No backend: 503, then the socket's sending side ends and it reads on (not a full close, whose
    unread input makes the kernel send a reset that can discard the answer)."""
    sock, _, _ = _behind_haproxy()
    assert sock.value().startswith(b"HTTP/1.1 503 ")
    assert (sock.write_closed, sock.disconnecting) == (True, False)


def test_a_websocket_close_behind_haproxy_half_closes_the_tcp_socket() -> None:
    """The close handshake's half-close: the broker's close frame, then the socket's sending side ends."""
    backend = FakeBackend()
    sock, broker, protocol = _behind_haproxy(backend)
    request = backend.decoded(wire.CONNECTION_REQUEST)[-1]
    line = wire.response_frame(request["request_id"], True, "alice", "lobby", None)
    broker.backend_frame(wire.decode_frame(line), line, backend)
    assert sock.value().startswith(b"HTTP/1.1 101 ")
    protocol.dataReceived(close_frame(1000, "bye"))
    assert (sock.write_closed, sock.disconnecting) == (True, False)


# -- real sockets ------------------------------------------------------------------------


@pytest.fixture
def haproxy_broker(start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    """A broker whose WebSocket port expects the PROXY protocol, with no backend (each handshake gets 503)."""
    return start_broker(ws_endpoint=f"haproxy:tcp:0:interface={HOST}")


def test_behind_haproxy_a_client_that_sends_on_after_its_refusal_is_not_reset(haproxy_broker: RunningBroker) -> None:
    """The client reads its 503 and the end of the answer, then sends on: the broker reads and drops it
    (as over plain TCP), instead of a closed socket answering with a reset."""
    with socket.create_connection((HOST, haproxy_broker.ws_port), timeout=5) as conn:
        conn.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 51000 80\r\n" + request_head())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 503 ")
        deadline = time.monotonic() + 1.0
        error: OSError | None = None
        while error is None and time.monotonic() < deadline:
            try:
                conn.sendall(b"more bytes the client had queued\r\n")
            except OSError as raised:
                error = raised
            time.sleep(0.02)
        assert error is None

"""The Outbox on a real TCP socket: one reactor turn's writes go out in one system call, in order.

On a ``FileDescriptor`` transport the Outbox gathers a turn's writes and
sends them at the end of the turn (``writeSomeData``, once), or hands them
to the transport past ``GATHER_LIMIT``; closing sends what was gathered
first, stopping forgets it. The sans-I/O rules (limits,
timeouts, congestion) are in test_guards.py, on a ``StringTransport``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol

from pystrands.broker.outbox import GATHER_LIMIT, Outbox

from .conftest import TIMEOUT, ReactorThread


class Server(Protocol):
    """Accepted connections, each with an Outbox whose transport counts its writeSomeData calls."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.sends: list[bytes] = []
        direct = transport.writeSomeData

        def counted(data: bytes) -> object:
            self.sends.append(bytes(data))
            return direct(data)

        transport.writeSomeData = counted
        self.outbox = Outbox(transport, self.factory.reactor, limit=1 << 20, timeout=5.0,
                             on_fault=lambda why: None)
        self.factory.accepted.append(self)


@pytest.fixture
def served() -> Iterator[tuple[ReactorThread, list[Server], socket.socket]]:
    """A reactor thread, the server side's connections, and a connected client socket."""
    thread = ReactorThread()
    factory = Factory.forProtocol(Server)
    factory.reactor = thread.reactor  # type: ignore[attr-defined]
    factory.accepted = []  # type: ignore[attr-defined]
    port = thread.call(thread.reactor.listenTCP, 0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=TIMEOUT)
    thread.wait_for(lambda: bool(factory.accepted), "the connection to be accepted")  # type: ignore[attr-defined]
    try:
        yield thread, factory.accepted, client  # type: ignore[attr-defined]
    finally:
        client.close()
        thread.call(port.stopListening)
        thread.stop()


def read_until_closed(client: socket.socket) -> bytes:
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def test_the_writes_of_one_turn_go_out_in_one_send_in_order(served: Any) -> None:
    thread, accepted, client = served
    server = accepted[0]

    def three() -> None:
        for part in (b"one ", b"two ", b"three"):
            server.outbox.write(part)

    thread.call(three)
    thread.call(lambda: None)  # the next turn: gathered writes are sent by now
    assert server.sends == [b"one two three"]
    thread.call(server.outbox.close)
    assert read_until_closed(client) == b"one two three"


def test_past_the_gather_limit_the_transport_takes_them_so_a_full_buffer_shows_within_the_turn(served: Any) -> None:
    thread, accepted, client = served
    server = accepted[0]

    def over_the_limit() -> tuple[bool, bool]:
        server.outbox.write(b"a" * GATHER_LIMIT)
        at_the_limit = server.outbox.congested
        server.outbox.write(b"b")  # the transport's buffer now holds more than its bufferSize
        return at_the_limit, server.outbox.congested

    assert thread.call(over_the_limit) == (False, True)
    thread.call(server.outbox.close)
    assert read_until_closed(client) == b"a" * GATHER_LIMIT + b"b"


def test_closing_in_the_same_turn_sends_what_was_gathered_first(served: Any) -> None:
    thread, accepted, client = served
    server = accepted[0]

    def write_and_close() -> None:
        server.outbox.write(b"last words")
        server.outbox.close(half=True)

    thread.call(write_and_close)
    assert read_until_closed(client) == b"last words"  # then FIN: our side is half-closed


def test_stopping_forgets_what_was_gathered(served: Any) -> None:
    thread, accepted, client = served
    server = accepted[0]

    def write_and_stop() -> None:
        server.outbox.write(b"never sent")
        server.outbox.stop()
        server.transport.loseConnection()

    thread.call(write_and_stop)
    assert read_until_closed(client) == b""
    assert b"".join(server.sends) == b""


def test_a_peer_whose_send_fails_does_not_strand_the_others_of_its_turn(served: Any) -> None:
    thread, accepted, client = served
    port = accepted[0].transport.getHost().port
    second = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        thread.wait_for(lambda: len(accepted) == 2, "the second connection to be accepted")
        broken, healthy = accepted

        def fail(data: bytes) -> object:
            raise RuntimeError("a broken transport")

        def write_both() -> None:
            broken.transport.writeSomeData = fail
            broken.outbox.write(b"lost")
            healthy.outbox.write(b"delivered")

        thread.call(write_both)
        thread.call(lambda: None)  # the next turn: the gathered writes were sent or failed
        assert healthy.sends == [b"delivered"]
        thread.call(healthy.outbox.close)
        assert read_until_closed(second) == b"delivered"
    finally:
        second.close()

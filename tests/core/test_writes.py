"""How replies reach the socket: the frames sent while one read is handled go out together, at once."""

from __future__ import annotations

import copy
import json
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from pystrands import Backend
from pystrands.protocol import BrokerClientFactory
from tests.support import transcript
from tests.support.driver import Driver


class SocketLike(FileDescriptor):
    """A transport that records each send() it would make, as a TCP connection does."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.sends: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.sends.append(bytes(data))
        return len(data)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8081)


class Echo(Backend):
    def on_message(self, message: str, context: Any) -> Any:
        self.broker.send_room_message(context.room_id, "1:" + message)
        return self.broker.send_private_message(context.client_id, "2:" + message)


def connected(backend: Backend) -> tuple[Any, SocketLike, BrokerClientFactory]:
    driver = Driver(backend).connect()
    transport = SocketLike(MemoryReactorClock())
    driver.succeed(transport)
    return driver.protocol, transport, driver.factory


def new_message(text: str, client_id: str) -> bytes:
    frame = copy.deepcopy(transcript.frames(action="new_message")[0])
    frame["params"]["message"] = text
    frame["params"]["context"]["client_id"] = client_id
    return json.dumps(frame).encode() + b"\n"


def test_replies_to_one_read_are_sent_in_one_piece_before_it_returns() -> None:
    protocol, transport, _ = connected(Echo())
    protocol.dataReceived(new_message("a", "c1") + new_message("b", "c2") + new_message("c", "c1"))
    assert len(transport.sends) == 1
    sent = [json.loads(line) for line in transport.sends[0].splitlines()]
    assert [frame["params"]["message"] for frame in sent] == ["1:a", "2:a", "1:b", "2:b", "1:c", "2:c"]


def test_a_send_outside_a_read_is_left_to_the_transport() -> None:
    protocol, transport, factory = connected(Echo())
    done = factory.broadcast_message("later")
    assert done.called and transport.sends == []  # the reactor's next turn writes it
    transport.doWrite()
    assert json.loads(transport.sends[0])["params"] == {"message": "later"}


def test_a_reply_that_cannot_go_out_now_waits_in_the_transport() -> None:
    protocol, transport, _ = connected(Echo())
    send = transport.writeSomeData
    transport.writeSomeData = lambda data: 0  # the socket buffer is full
    protocol.dataReceived(new_message("a", "c1"))
    transport.writeSomeData = send
    transport.doWrite()  # the reactor's write turn
    assert [json.loads(line)["params"]["message"] for line in transport.sends[0].splitlines()] == ["1:a", "2:a"]


def test_a_reply_the_socket_takes_in_part_keeps_its_order() -> None:
    protocol, transport, _ = connected(Echo())
    send = transport.writeSomeData
    transport.writeSomeData = lambda data: send(bytes(data)[:10])  # the socket takes 10 bytes
    protocol.dataReceived(new_message("a", "c1"))
    protocol.dataReceived(new_message("b", "c1"))  # meanwhile more replies queue behind the rest
    transport.writeSomeData = send
    transport.doWrite()
    sent = b"".join(transport.sends)
    assert [json.loads(line)["params"]["message"] for line in sent.splitlines()] == ["1:a", "2:a", "1:b", "2:b"]

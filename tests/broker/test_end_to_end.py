"""End to end: the embedded broker with this library's backends, three WebSocket clients.

The same chat rules run on two faces: a ``pystrands.Backend`` under
``BackendService`` (the Twisted core, on the test's private reactor, with a
backend token) and a ``PyStrandsClient`` (the blocking face, on its own
reactor thread). Rooms, private messages, broadcast, join and leave.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from pystrands import Backend, BackendService, ConnectionRequestContext, Context

from .conftest import TIMEOUT, RunningBroker


class ChatRules:
    """What both faces do; ``sender`` has the three send methods."""

    def judge(self, request: ConnectionRequestContext) -> bool:
        _, _, room, name = request.url.split("/")
        request.context.client_id = name
        request.context.room_id = room
        request.context.metadata = {"name": name, "token": request.query.get("token", [""])[0]}
        return request.query.get("token") == ["ok"]

    def react(self, sender: Any, message: str, context: Context) -> Any:
        verb, _, rest = message.partition(":")
        if verb == "room":
            return sender.send_room_message(context.room_id, f"{context.metadata['name']}@{context.room_id}:{rest}")
        if verb == "dm":
            target, _, text = rest.partition(":")
            return sender.send_private_message(target, f"dm from {context.client_id}:{text}")
        return sender.broadcast_message(f"all:{rest}")


class TwistedChat(Backend, ChatRules):
    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        return self.judge(request)

    def on_new_connection(self, context: Context) -> Any:
        return self.broker.send_room_message(context.room_id, f"join:{context.client_id}")

    def on_message(self, message: str, context: Context) -> Any:
        return self.react(self.broker, message, context)

    def on_disconnect(self, context: Context) -> Any:
        return self.broker.send_room_message(context.room_id, f"leave:{context.client_id}")


def play_chat(broker: RunningBroker) -> None:
    """alice and bob in r1, carol in r2; each step waits for its deliveries."""
    def join(path: str) -> ClientConnection:
        return broker.open(path).result(TIMEOUT)

    def expect(client: ClientConnection, *messages: str) -> None:
        assert [client.recv(timeout=TIMEOUT) for _ in messages] == list(messages)

    alice = join("/ws/r1/alice?token=ok")
    expect(alice, "join:alice")
    bob = join("/ws/r1/bob?token=ok")
    expect(alice, "join:bob")
    expect(bob, "join:bob")
    carol = join("/ws/r2/carol?token=ok")
    expect(carol, "join:carol")
    with pytest.raises(InvalidStatus) as refused:
        join("/ws/r1/mallory?token=bad")
    assert refused.value.response.status_code == 403

    alice.send("room:hi")
    expect(alice, "alice@r1:hi")
    expect(bob, "alice@r1:hi")
    bob.send("dm:carol:psst")
    expect(carol, "dm from bob:psst")
    carol.send("all:hey")
    for client in (alice, bob, carol):
        expect(client, "all:hey")
    bob.close()
    expect(alice, "leave:bob")
    carol.send("dm:alice:last")
    expect(alice, "dm from carol:last")
    carol.send("all:end")  # nothing else was on its way: the next message is this broadcast
    expect(alice, "all:end")
    expect(carol, "all:end")


def test_twisted_core_backend(start_broker: Any) -> None:
    broker = start_broker(backend_token="s3cret")
    service = BackendService(TwistedChat(), f"tcp:host=127.0.0.1:port={broker.tcp_port}",
                             reactor=broker.thread.reactor, backend_token="s3cret")
    broker.thread.call(service.startService)
    try:
        broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the Twisted backend")
        play_chat(broker)
    finally:
        broker.thread.call(service.stopService)


def test_blocking_pystrands_client(broker: RunningBroker) -> None:
    client_module = pytest.importorskip(
        "pystrands.client", reason="pystrands.client (the blocking face) is not written yet")

    class BlockingChat(client_module.PyStrandsClient, ChatRules):
        def on_connection_request(self, request: ConnectionRequestContext) -> bool:
            return self.judge(request)

        def on_new_connection(self, context: Context) -> None:
            self.send_room_message(context.room_id, f"join:{context.client_id}")

        def on_message(self, message: str, context: Context) -> None:
            self.react(self, message, context)

        def on_disconnect(self, context: Context) -> None:
            self.send_room_message(context.room_id, f"leave:{context.client_id}")

    backend = BlockingChat(host="127.0.0.1", port=broker.tcp_port, auto_reconnect=False)
    assert backend.connect()
    try:
        broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the blocking backend")
        play_chat(broker)
    finally:
        backend.disconnect(timeout=2)

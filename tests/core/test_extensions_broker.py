"""The Twisted-native requests (Deferreds on ``backend.broker``) against a real embedded broker process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint
from websockets.sync.client import connect

from pystrands import Backend, Context, NotSupportedError
from pystrands.protocol import BrokerClientFactory
from tests.core.harness import in_thread
from tests.demo.support import Broker, launching, start_broker


class Judge(Backend):
    def on_connection_request(self, request: Any) -> bool:
        request.context.client_id = request.query["id"][0]
        request.context.room_id = "lobby"
        return True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with launching(tmp_path, grace=10.0) as launch:
        yield start_broker(launch)


@pytest_twisted.ensureDeferred
async def test_deferreds_against_the_embedded_broker(broker: Broker, reactor: Any) -> None:
    backend = Judge()
    factory = BrokerClientFactory(backend, reactor)
    attempt = factory.next_attempt()
    factory.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", broker.tcp_port))
    assert await attempt
    ws = await in_thread(lambda: connect(f"{broker.ws_url}/lobby?id=a", open_timeout=5).__enter__())
    try:
        members: list[Context] = []
        for _ in range(100):  # the hello and the new connection arrive on their own time
            with contextlib.suppress(NotSupportedError):
                members = await backend.broker.room_members("lobby")
            if members:
                break
            await task.deferLater(reactor, 0.05)
        assert [(m.client_id, m.rooms) for m in members] == [("a", ["lobby"])]
        assert await backend.broker.join_room("a", "game") is True
        assert await backend.broker.set_metadata("a", {"n": 1}) is True
        (member,) = await backend.broker.room_members("game")
        assert member.rooms == ["lobby", "game"] and member.metadata == {"n": 1}
        assert await backend.broker.leave_room("a", "game") is True
        assert await backend.broker.disconnect_client("a", 4000, "bye") is True
        assert await backend.broker.disconnect_client("nobody") is False
        with pytest.raises(ValueError, match="code"):
            await backend.broker.disconnect_client("a", 2000)
    finally:
        await in_thread(ws.close)
        await factory.stop()

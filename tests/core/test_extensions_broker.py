"""The Twisted-native requests (Deferreds on ``backend.broker``) against a real embedded broker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from websockets.sync.client import connect

from pystrands import Backend, Context
from pystrands.protocol import BrokerClientFactory
from tests.core.harness import in_thread
from tests.demo.support import Broker, launching, start_broker


class Judge(Backend):
    def __init__(self) -> None:
        super().__init__()
        #: Fires with the first client's context: by then the broker's hello has come (its first frame).
        self.joined: Deferred[Context] = Deferred()

    def on_new_connection(self, context: Context) -> None:
        if not self.joined.called:
            self.joined.callback(context)

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
        await backend.joined.addTimeout(10, reactor)
        members = await backend.broker.room_members("lobby")
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

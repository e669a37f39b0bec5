"""The forwarding machine of cluster nodes, deterministic: nodes on a Clock over an in-memory Redis link."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from pystrands import wire
from pystrands.broker.router import Admission
from tests.cluster.memory import MemoryBackend, MemoryRedis, Node


def nodes(count: int, **settings: Any) -> tuple[Clock, MemoryRedis, list[Node]]:
    """``count`` nodes of one cluster, connected and heard by each other."""
    clock = Clock()
    redis = MemoryRedis(clock)
    started = [Node(redis, **settings) for _ in range(count)]
    redis.run()
    return clock, redis, started


def admitted(node: Node, backend: MemoryBackend, client_id: str, redis: MemoryRedis) -> Admission:
    """A handshake on ``node`` judged by ``backend`` (on any node) and accepted as ``client_id``."""
    outcome = node.handshake()
    redis.run()
    backend.accept(backend.requests()[-1], client_id)
    redis.run()
    [admission] = outcome
    assert isinstance(admission, Admission), admission
    return admission


def replies(backend: MemoryBackend) -> list[dict[str, Any]]:
    return [frame.params for frame in backend.frames if frame.action == wire.REPLY]


def test_room_members_does_not_wait_for_a_handshake_of_its_own_in_the_room() -> None:
    _, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    b.connect(admitted(b, backend_b, "on-b", redis))
    admitted(a, backend_a, "on-a", redis)  # accepted, not yet upgraded: A watches the lobby already
    backend_a.reply("room_members", {"room_id": "lobby"}, "q1")
    redis.run()
    assert [[member["client_id"] for member in reply["result"]] for reply in replies(backend_a)] == [["on-b"]]
    assert not a.broker._queries  # answered without waiting for its timeout

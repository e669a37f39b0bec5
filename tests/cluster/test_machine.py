"""The forwarding machine of cluster nodes, deterministic: nodes on a Clock over an in-memory Redis link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from pystrands import wire
from pystrands.broker import cluster_wire
from pystrands.broker.router import Admission
from tests.cluster.memory import HEARTBEAT, MemoryBackend, MemoryClient, MemoryRedis, Node


def nodes(count: int, **settings: Any) -> tuple[Clock, MemoryRedis, list[Node]]:
    """``count`` nodes of one cluster, connected and heard by each other."""
    clock = Clock()
    redis = MemoryRedis(clock)
    started = [Node(redis, **settings) for _ in range(count)]
    redis.run()
    return clock, redis, started


def passes(clock: Clock, redis: MemoryRedis, seconds: float) -> None:
    """Let ``seconds`` pass in steps of a tenth of a heartbeat, Redis carrying out what each step sent."""
    for _ in range(round(seconds / (HEARTBEAT / 10))):
        clock.advance(HEARTBEAT / 10)
        redis.run()


def admitted(node: Node, backend: MemoryBackend, client_id: str, redis: MemoryRedis) -> Admission:
    """A handshake on ``node`` judged by ``backend`` (on any node) and accepted as ``client_id``."""
    outcome = node.handshake()
    redis.run()
    backend.accept(backend.requests()[-1], client_id)
    redis.run()
    [admission] = outcome
    assert isinstance(admission, Admission), admission
    return admission


def refused(outcome: list[Any]) -> list[tuple[str, int]]:
    """(kind, status) of the refusals in a handshake's outcome."""
    return [(type(result).__name__, result.status) for result in outcome]


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


def test_one_client_id_accepted_on_two_nodes_at_once_is_taken_by_one_and_refused_409_on_the_other() -> None:
    clock, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    on_a, on_b = a.handshake(), b.handshake()
    backend_a.accept(backend_a.requests()[-1], "same")
    backend_b.accept(backend_b.requests()[-1], "same")  # both asked Redis before either subscribed
    redis.run()
    outcomes = on_a + on_b
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Admission", "HandshakeRefused"]
    assert [outcome.status for outcome in outcomes if not isinstance(outcome, Admission)] == [409]
    winner, [admission] = (a, on_a) if isinstance(on_a[0], Admission) else (b, on_b)
    assert redis.get(b"test:claim:same") == winner.broker.node.encode()
    client = winner.connect(admission)
    passes(clock, redis, 5 * HEARTBEAT)
    assert redis.get(b"test:claim:same") == winner.broker.node.encode()  # renewed by the heartbeats
    winner.broker.client_disconnected(client)
    redis.run()
    assert redis.get(b"test:claim:same") is None
    assert isinstance(admitted(a if winner is b else b, backend_a if winner is b else backend_b, "same", redis),
                      Admission)  # free again, on the other node


def test_a_client_that_moves_to_another_node_is_abandoned_by_the_old_one() -> None:
    clock, redis, (a, b, c) = nodes(3)
    first = b.backend()
    redis.run()
    client = a.connect(admitted(a, first, "x", redis))  # A has no backend: B's judged it
    redis.run()
    backend_c = c.backend()
    b.broker.backend_lost(first)  # B has no backend left: A's client moves to C at its next event
    redis.run()
    a.broker.client_message(client, "moved")
    redis.run()
    assert backend_c.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "moved")]
    second = b.backend()
    a.link.cut()  # A falls silent: C and B forget it, and its clients leave their backends
    passes(clock, redis, 2 * HEARTBEAT)
    assert backend_c.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]
    assert second.events(wire.DISCONNECTED) == []  # B was told when x left it, so no second goodbye


def event(origin: Node, client_id: str, message: str = "hi") -> bytes:
    frame = wire.encode_frame(wire.NEW_MESSAGE, {"message": message, "context": {"client_id": client_id}})
    return cluster_wire.encode("event", origin.broker.node, client_id, False, frame.decode())


def test_guests_of_one_origin_are_bounded_and_handshakes_come_only_from_known_nodes() -> None:
    _, redis, (a, b) = nodes(2, max_clients=2)
    backend = a.backend()
    redis.run()
    for client_id in ("g1", "g2", "g3", "g1"):
        b.link.publish(b"test:node:" + a.broker.node.encode(), event(b, client_id, client_id))
    redis.run()
    assert backend.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "g1"), (wire.NEW_MESSAGE, "g2"),
                                                (wire.NEW_MESSAGE, "g1")]
    assert a.broker.metrics.cluster_rejected == 1
    judge = cluster_wire.encode("judge", "stranger", "r1", {"headers": {}, "url": "/ws/x", "remote_addr": "",
                                                             "query": {}})
    b.link.publish(b"test:node:" + a.broker.node.encode(), judge)
    redis.run()
    assert backend.requests() == [] and a.broker.metrics.cluster_rejected == 2
    full = b.handshake()  # B's own: A holds max_clients of B's clients, and says so
    redis.run()
    assert refused(full) == [("HandshakeRefused", 503)] and backend.requests() == []


def judging(**settings: Any) -> tuple[Clock, MemoryRedis, Node, Node, MemoryBackend, list[Any]]:
    """Two nodes, B with a backend (``judge``), and a handshake of A forwarded to it (the list of its outcome)."""
    clock, redis, (a, b) = nodes(2, **settings)
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
    return clock, redis, a, b, judge, outcome


def forwarded(count: int, **settings: Any) -> tuple[Clock, MemoryRedis, list[Node], MemoryBackend, MemoryClient]:
    """``count`` nodes; client ``x`` of node A, forwarded to and admitted by node B's backend (``judge``)."""
    clock, redis, cluster = nodes(count, **settings)
    a, b = cluster[:2]
    judge = b.backend()
    redis.run()
    return clock, redis, cluster, judge, a.connect(admitted(a, judge, "x", redis))


def forwarded_through_a_redis_restart() -> tuple[Clock, MemoryRedis, list[Node], MemoryClient, MemoryBackend,
                                                  MemoryBackend]:
    """Client ``x`` of node A forwarded to B's backend (``judge``), C with a backend too (``other``); then
    Redis restarted without persistence, and A and C connected again while B is not heard yet."""
    clock, redis, (a, b, c), judge, client = forwarded(3)
    other = c.backend()
    redis.run()
    for node in (a, b, c):
        node.link.cut()
    redis.keys.clear()
    a.link.restore()
    c.link.restore()
    redis.run()
    return clock, redis, [a, b, c], client, judge, other


def test_a_forwarded_client_keeps_its_node_across_a_redis_restart() -> None:
    _, redis, (a, b, _), client, judge, other = forwarded_through_a_redis_restart()
    assert redis.get(b"test:claim:x") == a.broker.node.encode()  # claimed again
    a.broker.client_message(client, "during")
    redis.run()
    assert other.events(wire.NEW_MESSAGE) == []  # held for B, which may well still be there
    b.link.restore()
    redis.run()
    assert judge.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE) == [(wire.NEW_CONNECTION, "x"),
                                                                  (wire.NEW_MESSAGE, "during")]
    a.broker.client_message(client, "after")
    redis.run()
    assert judge.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "during"), (wire.NEW_MESSAGE, "after")]
    assert other.frames[1:] == []  # hello only


def test_a_forwarded_client_moves_on_once_its_node_stays_silent_after_a_redis_restart() -> None:
    clock, redis, (a, _, _), client, _, other = forwarded_through_a_redis_restart()
    a.broker.client_message(client, "held")
    a.broker.client_message(client, "held too")
    redis.run()
    assert other.events(wire.NEW_MESSAGE) == []
    passes(clock, redis, 2 * HEARTBEAT)  # B is forgotten: x's events go on to C, in order
    assert other.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "held"), (wire.NEW_MESSAGE, "held too")]


def test_a_node_that_learns_it_was_forgotten_closes_its_forwarded_clients_and_lets_its_guests_go() -> None:
    clock, redis, (a, b, c), judge, client = forwarded(3)
    own = a.backend()
    redis.run()
    b.link.publish(b"test:node:" + a.broker.node.encode(), event(b, "g", "g"))  # B's client, served by A's backend
    c.broker.peers.doubt(b.broker.node)  # C counts on A's backend alone for a moment ...
    c.connect(admitted(c, own, "h", redis))  # ... so C's client h is served by A's backend too
    redis.run()
    assert own.events(wire.NEW_MESSAGE, wire.NEW_CONNECTION) == [(wire.NEW_MESSAGE, "g"), (wire.NEW_CONNECTION, "h")]
    a.link.cut()  # A is cut off from Redis: B forgets it, and x leaves B's backend ...
    c.link.cut()  # ... but C, cut off too, cannot hear that A is silent: it keeps it
    passes(clock, redis, 2 * HEARTBEAT)
    assert judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]
    a.link.restore()
    c.link.restore()
    redis.run()
    assert client.closed == (1012, "this node was cut off from the cluster; reconnect")
    assert own.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "g")]  # B's client went elsewhere, C's did not
    assert redis.get(b"test:forgot:" + a.broker.node.encode()) is None  # read once
    a.broker.client_disconnected(client)  # the WebSocket closes: B's backend got its goodbye already
    passes(clock, redis, HEARTBEAT)
    assert judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]
    assert len(b.broker.peers) == 2  # A (and C) are back in the cluster


def test_a_node_forgotten_while_it_still_hears_redis_learns_it_from_the_note() -> None:
    _, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    b.link.publish(b"test:nodes", cluster_wire.encode("forgot", b.broker.node, a.broker.node))  # as after a stall
    redis.run()
    assert client.closed == (1012, "this node was cut off from the cluster; reconnect")
    a.broker.client_disconnected(client)
    redis.run()
    assert judge.events(wire.DISCONNECTED) == []  # B gave its backend the goodbye when it forgot A


def test_a_verdict_after_the_handshake_timed_out_makes_the_judging_node_forget_the_client() -> None:
    clock, redis, a, b, judge, outcome = judging(auth_timeout=1.0)
    clock.advance(1.0)  # A gives up: 403
    assert refused(outcome) == [("HandshakeRefused", 403)]
    judge.accept(judge.requests()[-1], "late")  # B's backend accepts after all: A says abandon
    redis.run()
    assert judge.load == 0 and not b.broker._guests.get(a.broker.node)
    assert redis.get(b"test:claim:late") is None


def test_a_handshake_waiting_on_a_node_that_goes_silent_gets_503() -> None:
    clock, redis, (a, b) = nodes(2, auth_timeout=10.0)
    b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
    b.link.cut()
    passes(clock, redis, 2 * HEARTBEAT)
    assert refused(outcome) == [("HandshakeRefused", 503)]


def test_a_handshake_no_node_got_gets_503_at_once() -> None:
    _, redis, (a, b) = nodes(2, auth_timeout=10.0)
    b.backend()
    redis.run()
    b.link.cut()  # B hears nothing now; A has not noticed yet
    unheard = a.handshake()
    redis.run()
    assert refused(unheard) == [("HandshakeRefused", 503)]  # nobody on B's channel: no verdict can come
    b.link.restore()
    redis.run()
    lost = a.handshake()
    a.link.cut()  # A's connection goes before Redis carried the forwarded handshake
    redis.run()
    assert refused(lost) == [("HandshakeRefused", 503)]
    assert not a.broker._handshakes


def test_a_node_that_stalled_and_was_forgotten_refuses_its_waiting_handshakes_and_is_heard_before_its_next() -> None:
    clock, redis, (a,) = nodes(1, auth_timeout=10.0)
    b = Node(redis, Clock(), auth_timeout=10.0)  # B's loop never turns: it stalls while A's time passes
    redis.run()
    judge = a.backend()
    redis.run()
    waiting = b.handshake()  # on its way to A as A's time passes without a beat from B
    for _ in range(20):
        clock.advance(HEARTBEAT / 10)
    redis.run()  # A forgot B before the handshake came: skipped; then B reads that A forgot it
    assert judge.requests() == [] and a.broker.metrics.cluster_rejected == 1
    assert refused(waiting) == [("HandshakeRefused", 503)]  # at once, not after auth_timeout
    assert isinstance(admitted(b, judge, "next", redis), Admission)  # B beat first: A hears its next handshake


def test_with_no_backend_anywhere_events_wait_and_go_to_the_first_backend_on_any_node() -> None:
    _, redis, (a, b) = nodes(2)
    outcome = a.handshake()
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 503)]
    assert len(a.broker.queue) == 1  # the refused handshake's error event, as on one node
    first = b.backend()
    redis.run()
    assert [frame.action for frame in first.frames] == [wire.HELLO, wire.ERROR]
    assert len(a.broker.queue) == 0


def test_an_event_on_its_way_to_a_node_whose_last_backend_leaves_goes_on_to_another() -> None:
    _, redis, (a, b, c), judge, client = forwarded(3)
    other = c.backend()
    redis.run()
    a.broker.client_message(client, "in flight")  # published to B ...
    b.broker.backend_lost(judge)  # ... whose backend leaves before B reads it
    redis.run()
    assert other.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "in flight")]
    assert len(b.broker.queue) == 0 and b.broker._forwarded == {}  # relayed, not taken for B's own client
    assert {node: list(guests) for node, guests in c.broker._guests.items()} == {a.broker.node: ["x"]}  # A's client
    a.broker.client_message(client, "next")
    b.broker.stop()
    b.broker.shutdown()  # B goes: x, A's client, is not B's to say goodbye for
    redis.run()
    assert other.events(wire.NEW_MESSAGE, wire.DISCONNECTED) == [(wire.NEW_MESSAGE, "in flight"),
                                                                (wire.NEW_MESSAGE, "next")]
    a.broker.client_disconnected(client)
    redis.run()
    assert other.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]  # once, when x goes


def test_an_event_on_its_way_to_the_last_backend_of_the_cluster_waits_there_for_the_next_one() -> None:
    _, redis, (a, b, c), judge, client = forwarded(3)
    redis.run()
    a.broker.client_message(client, "in flight")
    b.broker.backend_lost(judge)  # no backend left anywhere: B holds it, as A's client's
    redis.run()
    assert len(b.broker.queue) == 0 and len(b.broker._held) == 1
    later = c.backend()
    redis.run()
    assert later.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "in flight")]
    assert {node: list(guests) for node, guests in c.broker._guests.items()} == {a.broker.node: ["x"]}
    assert b.broker._forwarded == {}


def test_a_backend_reaches_clients_of_every_node_once_in_order() -> None:
    _, redis, (a, b) = nodes(2)
    backend = b.backend()
    redis.run()
    here = b.connect(admitted(b, backend, "here", redis))
    lobby = a.connect(admitted(a, backend, "lobby-x", redis))
    kitchen_admission = a.handshake("/ws/kitchen")
    redis.run()
    backend.reply(wire.RESPONSE, {"accepted": True, "client_id": "kitchen-y", "room_id": "kitchen", "metadata": None},
                  backend.requests()[-1].request_id)
    redis.run()
    kitchen = a.connect(kitchen_admission[0])
    redis.run()
    backend.reply(wire.MESSAGE_TO_ROOM, {"room_id": "lobby", "message": "room"})
    backend.reply(wire.BROADCAST, {"message": "all"})
    backend.reply(wire.MESSAGE_TO_CONNECTION, {"conn_id": "kitchen-y", "message": "to"})
    redis.run()
    assert (here.texts, lobby.texts, kitchen.texts) == (["room", "all"], ["room", "all"], ["all", "to"])


def test_a_request_about_a_client_of_another_node_is_answered_once_in_effect_there() -> None:
    _, redis, (a, b) = nodes(2)
    backend = b.backend()
    redis.run()
    client = a.connect(admitted(a, backend, "x", redis))
    redis.run()
    backend.reply("join_room", {"client_id": "x", "room_id": "kitchen"}, "j1")
    backend.reply("join_room", {"client_id": "nobody", "room_id": "kitchen"}, "j2")
    redis.run()
    answers = {frame.request_id: frame.params for frame in backend.frames if frame.action == wire.REPLY}
    assert answers == {"j1": {"ok": True, "result": True}, "j2": {"ok": True, "result": False}}
    assert a.link.watching(b"test:room:kitchen")
    backend.reply(wire.MESSAGE_TO_ROOM, {"room_id": "kitchen", "message": "joined"})
    redis.run()
    assert client.texts == ["joined"]


def test_a_node_back_after_its_claim_expired_neither_takes_nor_frees_the_id_another_node_took() -> None:
    clock, redis, (a, b, c) = nodes(3)
    backend_a, backend_b, backend_c = a.backend(), b.backend(), c.backend()
    redis.run()
    on_a = a.connect(admitted(a, backend_a, "x", redis))
    redis.run()
    a.link.cut()  # A cut off (or stalled) past its claim's expiry
    passes(clock, redis, 3 * HEARTBEAT)
    assert redis.get(b"test:claim:x") is None
    b.connect(admitted(b, backend_b, "x", redis))  # rightly: no node holds x
    a.link.restore()
    passes(clock, redis, HEARTBEAT)
    assert redis.get(b"test:claim:x") == b.broker.node.encode()  # A's renewal did not take it back
    assert on_a.closed == (1008, "client_id connected on another node")  # one id, one client
    a.broker.client_disconnected(on_a)
    redis.run()
    assert redis.get(b"test:claim:x") == b.broker.node.encode()  # nor did A free it
    outcome = c.handshake()
    redis.run()
    backend_c.accept(backend_c.requests()[-1], "x")
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 409)]


def test_a_node_whose_own_loop_stalled_does_not_forget_the_nodes_whose_beats_it_has_not_read_yet() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    passes(clock, redis, 0.5 * HEARTBEAT)  # B's last beat heard 0.5 heartbeat ago
    clock.advance(1.2 * HEARTBEAT)  # both loops stalled: the overdue timers run, nothing read yet
    redis.run()  # then the sockets are read: the beats sent meanwhile
    passes(clock, redis, 3 * HEARTBEAT)
    assert [args for args in redis.log if args[0] == b"PUBLISH" and b'"forgot"' in args[2]] == []
    assert (len(a.broker.peers), len(b.broker.peers)) == (1, 1)
    assert client.closed is None and judge.events(wire.DISCONNECTED) == []


def test_a_verdict_for_a_node_forgotten_or_deaf_meanwhile_leaves_no_guest_and_no_load() -> None:
    clock, redis, (a, b) = nodes(2, auth_timeout=10.0)
    judge = b.backend()
    redis.run()
    a.handshake()
    a.handshake()
    redis.run()
    first, second = judge.requests()
    a.link.cut()  # A is cut off while B's backend judges: its channel has no subscriber
    redis.run()
    judge.accept(first, "deaf")  # A not forgotten yet, but no one hears the verdict
    redis.run()
    passes(clock, redis, 2 * HEARTBEAT)
    assert a.broker.node not in b.broker.peers
    judge.accept(second, "forgotten")  # A forgotten
    passes(clock, redis, HEARTBEAT)
    assert b.broker._guests == {} and judge.load == 0
    assert judge.events(wire.DISCONNECTED) == []  # neither client ever connected


def test_a_node_back_on_redis_reads_who_forgot_it_and_asks_for_beats_only_once_subscribed_again() -> None:
    clock, redis, (a, b) = nodes(2)
    a.link.cut()
    passes(clock, redis, 2 * HEARTBEAT)
    assert a.broker.node not in b.broker.peers
    start = len(redis.log)
    a.link.restore()
    redis.run()
    node = a.broker.node
    done = redis.log[start:]
    subscribed = max(done.index((b"SUBSCRIBE", channel)) for channel in (b"test:nodes", b"test:node:" + node.encode()))
    read = done.index((b"SMEMBERS", b"test:forgot:" + node.encode()))
    answer = done.index((b"PUBLISH", b"test:nodes", cluster_wire.encode("beat", node, 0, True)))
    # Else a forgot note could fall between the read and the subscription, and answers be lost.
    assert subscribed < read < answer


def test_the_goodbye_for_a_client_of_a_forgotten_node_has_the_context_of_its_latest_event() -> None:
    clock, redis, (a, _), judge, client = forwarded(2)
    judge.reply("join_room", {"client_id": "x", "room_id": "kitchen"}, "j1")
    redis.run()
    a.broker.client_message(client, "from the kitchen")
    redis.run()
    a.link.cut()
    passes(clock, redis, 2 * HEARTBEAT)
    [goodbye] = [frame for frame in judge.frames if frame.action == wire.DISCONNECTED]
    assert goodbye.params["context"]["rooms"] == ["lobby", "kitchen"]


CHOICES = """
from twisted.internet.task import Clock
from tests.cluster.memory import MemoryRedis, Node
node = Node(MemoryRedis(Clock()))
node.link.up = True
for peer in ("n1", "n2", "n3"):
    node.broker.peers.heard(peer, 1)
print([node.broker._target(f"c{number}") for number in range(40)])
"""


def test_every_node_picks_the_same_node_with_a_backend_for_a_client() -> None:
    """Else an event relayed by a node that lost its last backend and the client's next events, sent by
    its own node, reach two different nodes' backends."""
    picks = {subprocess.run([sys.executable, "-c", CHOICES], env={**os.environ, "PYTHONHASHSEED": seed},
                            cwd=Path(__file__).parents[2], capture_output=True, text=True, check=True,
                            timeout=60).stdout
             for seed in ("1", "2")}
    assert len(picks) == 1


def test_a_verdict_that_cannot_be_published_leaves_no_guest_and_no_load() -> None:
    _, _redis, a, b, judge, _ = judging(auth_timeout=10.0)
    b.link.cut()  # B loses Redis while its backend judges
    judge.accept(judge.requests()[-1], "unsaid")
    assert not b.broker._guests.get(a.broker.node) and judge.load == 0


def test_an_event_on_its_way_to_a_node_whose_last_backend_leaves_is_not_relayed_once_its_own_node_has_one() -> None:
    _, redis, (a, b, c), judge, client = forwarded(3)
    other, own = c.backend(), a.backend()  # A serves its new clients itself now; x stays with B
    redis.run()
    a.broker.client_message(client, "in flight")
    b.broker.backend_lost(judge)
    redis.run()
    assert other.events(wire.NEW_MESSAGE) == [] and not c.broker._guests.get(a.broker.node)  # no stray guest
    assert b.broker.metrics.cluster_unpublished == 1 and len(b.broker._held) == 0  # lost, counted
    a.broker.client_message(client, "next")
    redis.run()
    assert own.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "next")]  # where A sends x's events now


def test_readiness_says_why_a_node_is_not_ready() -> None:
    _, redis, (a, b) = nodes(2)
    assert not a.broker.ready and a.broker.unready_reason == "no backend is connected to any node of the cluster"
    b.backend()
    redis.run()
    assert a.broker.ready  # B's backend judges A's handshakes
    a.link.cut()
    assert not a.broker.ready
    assert a.broker.unready_reason == ("no backend is connected here, and the cluster's Redis is not reachable"
                                       " (yet)")

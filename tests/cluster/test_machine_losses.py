"""The forwarding machine when Redis loses one of its messages: what each loss costs (Clock, memory Redis)."""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pystrands import wire
from pystrands.broker import cluster_wire
from pystrands.broker.cluster import LOST_START, QUERY_TIMEOUT
from tests.cluster.memory import HEARTBEAT, MemoryBackend, MemoryClient, MemoryRedis, Node
from tests.cluster.test_machine import admitted, forwarded, judging, nodes, passes, refused, replies


def test_a_verdict_lost_while_the_asking_node_was_off_redis_gets_503_at_once() -> None:
    clock, redis, a, _b, judge, outcome = judging(auth_timeout=10.0)
    a.link.cut()  # a short blip of A's connections while B's backend judges
    assert refused(outcome) == [("HandshakeRefused", 503)]  # its verdict could come while A is not subscribed
    judge.accept(judge.requests()[-1], "x")  # published to no subscriber: lost
    redis.run()
    a.link.restore()
    passes(clock, redis, HEARTBEAT)
    assert judge.load == 0  # B knows A did not hear it


def test_a_verdict_the_judging_node_could_not_publish_gets_503_once_that_node_is_back() -> None:
    _, redis, a, b, judge, outcome = judging(auth_timeout=10.0)
    b.link.cut()  # a short blip of B's connections while its backend judges
    judge.accept(judge.requests()[-1], "x")  # the verdict cannot be published
    b.link.restore()
    redis.run()
    assert len(a.broker.peers) == 1  # A never lost sight of B
    assert refused(outcome) == [("HandshakeRefused", 503)]  # at B's answer beat, not after auth_timeout
    assert judge.load == 0


def test_a_refusal_the_judging_node_could_not_publish_gets_503_once_that_node_is_back() -> None:
    _, redis, _a, b, judge, outcome = judging(auth_timeout=10.0)
    b.link.cut()
    judge.reply("response", {"accepted": False}, judge.requests()[-1].request_id)  # its 403, unpublished
    b.link.restore()
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 503)]


def test_a_handshake_lost_on_its_way_into_the_judging_node_gets_503_once_that_node_is_back() -> None:
    _, redis, (a, b) = nodes(2, auth_timeout=10.0)
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.step()  # Redis runs A's PUBLISH: B subscribed, counted 1 ...
    b.link.cut()  # ... and B's connection breaks before B read it
    redis.run()
    b.link.restore()
    redis.run()
    assert judge.requests() == [] and len(a.broker.peers) == 1
    assert refused(outcome) == [("HandshakeRefused", 503)]


def test_a_handshake_forwarded_to_a_node_that_just_joined_with_a_backend_is_judged() -> None:
    _, redis, (a,) = nodes(1, auth_timeout=10.0)
    b = Node(redis, auth_timeout=10.0)
    redis.step()  # B's connections are up; its subscriptions and its answer beat are under way
    judge = b.backend()  # a backend connects to B now
    while b.broker.node not in a.broker.peers.with_backends():
        redis.step()
    outcome = a.handshake()  # A forwards to B at once
    redis.run()
    assert b.broker.metrics.cluster_rejected == 0  # B had heard A: its answer beat came first
    judge.accept(judge.requests()[-1], "x")
    redis.run()
    assert [type(result).__name__ for result in outcome] == ["Admission"]


def test_events_queued_while_no_backend_was_anywhere_reach_the_first_node_that_joins_with_one() -> None:
    _, redis, (a,) = nodes(1)
    refused_early = a.handshake()  # no backend anywhere: 503, its error event waits in A's queue
    redis.run()
    assert refused(refused_early) == [("HandshakeRefused", 503)] and len(a.broker.queue) == 1
    b = Node(redis)
    redis.step()
    judge = b.backend()  # before B's answer beat
    redis.run()
    assert len(a.broker.queue) == 0
    assert [frame.action for frame in judge.frames] == ["hello", "error"]
    assert b.broker.metrics.cluster_rejected == 0


def test_a_request_about_a_client_accepted_here_and_not_yet_upgraded_is_answered_false_at_once() -> None:
    _, redis, (a, _) = nodes(2)
    backend = a.backend()
    redis.run()
    admitted(a, backend, "x", redis)  # A subscribed to x's channel; the upgrade is under way
    backend.reply("set_metadata", {"client_id": "x", "metadata": {"k": 1}}, "m1")
    redis.run()
    assert replies(backend) == [{"ok": True, "result": False}]  # as one node answers


def test_a_handshake_judged_for_another_node_with_the_id_of_a_client_here_leaves_that_client_on_its_backend() -> None:
    _, redis, (a, b) = nodes(2)
    first, second = b.backend(), b.backend()
    redis.run()
    own = b.connect(admitted(b, first, "u", redis))  # u, B's own client, served by B's first backend
    redis.run()
    outcome = a.handshake()  # the same id again, through A: judged by B's least loaded backend, second
    redis.run()
    second.accept(second.requests()[-1], "u")
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 409)]
    b.broker.client_message(own, "still mine")
    b.broker.client_disconnected(own)
    redis.run()
    assert first.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE, wire.DISCONNECTED) == [
        (wire.NEW_CONNECTION, "u"), (wire.NEW_MESSAGE, "still mine"), (wire.DISCONNECTED, "u")]
    assert second.events(wire.NEW_MESSAGE, wire.DISCONNECTED) == []
    assert (first.load, second.load) == (0, 0)


def test_a_forwarded_clients_goodbye_lost_in_a_blip_is_given_once_the_nodes_hear_each_other_again() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    assert judge.load == 1
    a.broker.client_disconnected(client)  # x's goodbye, published to B ...
    a.link.cut()  # ... lost with A's connection before Redis ran it
    a.link.restore()
    passes(clock, redis, 5 * HEARTBEAT)
    assert a.broker.metrics.cluster_unpublished == 1 and len(b.broker.peers) == 1  # B never forgot A
    assert judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")] and judge.load == 0
    goodbye = wire.encode_frame(wire.DISCONNECTED, {"context": client.admission.context}).decode()
    a.link.publish(b"test:node:" + b.broker.node.encode(), cluster_wire.encode("event", a.broker.node, "x", True,
                                                                                goodbye))
    redis.run()  # the goodbye, had it come late after all: not a second one
    assert judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]


def test_goodbyes_lost_in_blips_do_not_fill_the_judging_nodes_max_clients() -> None:
    clock, redis, (a, _), judge, client = forwarded(2, max_clients=1, auth_timeout=10.0)
    a.broker.client_disconnected(client)
    a.link.cut()
    a.link.restore()
    passes(clock, redis, 2 * HEARTBEAT)
    outcome = a.handshake()  # x is long gone: A has no client on B
    passes(clock, redis, HEARTBEAT)
    assert refused(outcome) == [] and len(judge.requests()) == 2


def test_a_forwarded_clients_goodbye_pushed_out_of_the_held_events_is_given_once_its_node_is_heard() -> None:
    clock, redis, (a, _), judge, x = forwarded(2, queue_size=1)
    y = a.connect(admitted(a, judge, "y", redis))
    redis.run()
    a.link.cut()  # a blip: the events of A's forwarded clients are held for B until B is heard again
    a.broker.client_disconnected(x)  # held: x's last event ...
    a.broker.client_message(y, "still here")  # ... pushed out by y's (queue_size 1; counted)
    assert a.broker.metrics.cluster_unpublished == 1
    a.link.restore()
    passes(clock, redis, 5 * HEARTBEAT)
    assert judge.events(wire.NEW_MESSAGE, wire.DISCONNECTED) == [(wire.NEW_MESSAGE, "still here"),
                                                                (wire.DISCONNECTED, "x")]
    assert judge.load == 1  # y's
    a.broker.client_disconnected(y)
    redis.run()
    assert judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x"), (wire.DISCONNECTED, "y")]
    assert judge.load == 0


def test_an_abandon_lost_in_a_blip_frees_the_backend_once_the_nodes_hear_each_other_again() -> None:
    clock, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    admission = admitted(a, judge, "x", redis)  # accepted by B's backend; the WebSocket not open yet
    a.link.cut()
    a.broker.abandon(admission)  # the client hangs up before its upgrade: the abandon is not published
    a.link.restore()
    passes(clock, redis, 5 * HEARTBEAT)
    assert a.broker.metrics.cluster_unpublished == 1 and len(b.broker.peers) == 1
    assert judge.load == 0 and judge.events(wire.DISCONNECTED) == []  # x never connected: no goodbye


def test_events_forwarded_to_a_node_during_its_redis_blip_are_counted_and_its_guest_let_go_once_it_is_back() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    b.link.cut()  # B's connections blip; A does not know (and will not forget B: it is back at once)
    a.broker.client_message(client, "during")  # published to B's channel: no subscriber
    a.broker.client_disconnected(client)  # x's goodbye, the same
    redis.run()
    b.link.restore()
    passes(clock, redis, 3 * HEARTBEAT)
    assert len(a.broker.peers) == 1 and a.broker.metrics.cluster_unpublished == 2
    assert judge.events(wire.NEW_MESSAGE, wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")] and judge.load == 0


def test_events_forwarded_to_a_node_that_did_not_hear_the_last_one_wait_for_it_to_be_back() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    b.link.cut()
    a.broker.client_message(client, "lost")  # no subscriber on B's channel: counted, B is doubted ...
    redis.run()
    a.broker.client_message(client, "held")  # ... so x's next events wait for B's next beat
    a.broker.client_disconnected(client)
    redis.run()
    b.link.restore()
    passes(clock, redis, 3 * HEARTBEAT)
    assert a.broker.metrics.cluster_unpublished == 1
    assert judge.events(wire.NEW_MESSAGE, wire.DISCONNECTED) == [(wire.NEW_MESSAGE, "held"), (wire.DISCONNECTED, "x")]
    assert judge.load == 0


def members(backend: MemoryBackend, request_id: str) -> list[list[str]]:
    """The client ids of each room_members reply to ``request_id`` the backend got."""
    return [sorted(member["client_id"] for member in frame.params["result"])
            for frame in backend.frames if frame.action == wire.REPLY and frame.request_id == request_id]


def cook_and_guest(kitchen: bool = False) -> tuple[Clock, MemoryRedis, Node, MemoryBackend]:
    """Two nodes with a backend each: client ``cook`` of B (in the ``kitchen`` too, if asked) and client
    ``guest`` of A, each in the lobby; A's backend is returned, the one that asks."""
    clock, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    b.connect(admitted(b, backend_b, "cook", redis))
    if kitchen:
        backend_b.reply("join_room", {"client_id": "cook", "room_id": "kitchen"}, "j0")
    a.connect(admitted(a, backend_a, "guest", redis))
    redis.run()
    return clock, redis, a, backend_a


def test_room_members_right_after_a_join_lists_the_other_nodes_members_too() -> None:
    clock, redis, a, backend_a = cook_and_guest(kitchen=True)
    a.link.lag()  # Redis runs A's next publishes before its subscriptions
    backend_a.reply("join_room", {"client_id": "guest", "room_id": "kitchen"}, "j1")
    backend_a.reply("room_members", {"room_id": "kitchen"}, "q1")
    redis.run()
    a.link.catch_up()
    redis.run()
    clock.advance(3.0)
    assert members(backend_a, "q1") == [["cook", "guest"]]


def test_room_members_right_after_the_last_local_member_left_does_not_wait_for_its_own_answer() -> None:
    _, redis, a, backend_a = cook_and_guest()
    a.link.lag()
    backend_a.reply("leave_room", {"client_id": "guest", "room_id": "lobby"}, "l1")
    backend_a.reply("room_members", {"room_id": "lobby"}, "q1")
    redis.run()
    a.link.catch_up()
    redis.run()
    assert members(backend_a, "q1") == [["cook"]]  # at once, not after QUERY_TIMEOUT


def test_a_handshake_under_way_keeps_its_room_subscribed_when_the_rooms_last_member_leaves() -> None:
    _, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    member = a.connect(admitted(a, judge, "m", redis))  # A's only member of the lobby
    redis.run()
    admitted(a, judge, "y", redis)  # y accepted into the lobby: A subscribed before its upgrade
    a.broker.client_disconnected(member)  # m leaves: no member of the lobby here ...
    redis.run()
    assert a.link.watching(b"test:room:lobby")  # ... but y's handshake into it is under way
    assert a.link in redis.subscribers[b"test:room:lobby"]


def test_what_a_backend_sends_the_room_in_answer_to_new_connection_reaches_the_new_client() -> None:
    _, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    member = a.connect(admitted(a, judge, "m", redis))
    redis.run()
    joining = admitted(a, judge, "y", redis)
    a.broker.client_disconnected(member)
    redis.run()
    a.link.lag()  # Redis runs A's publishes before any (un)subscription of A's from now on
    client = a.connect(joining)  # the upgrade: y's new_connection goes to B
    redis.run()
    assert judge.events(wire.NEW_CONNECTION)[-1] == (wire.NEW_CONNECTION, "y")
    judge.reply(wire.MESSAGE_TO_ROOM, {"room_id": "lobby", "message": "welcome"})  # B's backend answers at once
    redis.run()
    a.link.catch_up()
    redis.run()
    assert client.texts == ["welcome"]


def test_a_handshake_into_a_room_that_ends_before_the_upgrade_leaves_the_room_unsubscribed() -> None:
    _, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    a.broker.abandon(admitted(a, judge, "y", redis))  # the client hangs up before its upgrade
    redis.run()
    assert not a.link.watching(b"test:room:lobby") and not a.link.watching(b"test:client:y")
    assert a.link not in redis.subscribers[b"test:room:lobby"]


def test_a_client_judged_by_a_node_that_forgot_this_one_before_its_upgrade_gets_503() -> None:
    clock, redis, (b,) = nodes(1)
    a = Node(redis, Clock())  # A's loop stalls: its timers never run (no beats)
    redis.run()
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
    a.link.lag()  # A's subscriptions, before the upgrade, wait
    judge.accept(judge.requests()[-1], "x")
    redis.run()  # A reads the verdict and claims x; its upgrade waits for the subscriptions
    passes(clock, redis, 2 * HEARTBEAT)  # B forgets A, and says so: A reads the note
    assert outcome == []
    a.link.catch_up()
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 503)]  # not upgraded into a backend that let x go
    assert judge.load == 0 and judge.events(wire.NEW_CONNECTION, wire.DISCONNECTED) == []
    assert redis.get(b"test:claim:x") is None


def test_a_join_room_carried_out_across_a_blip_of_the_clients_node_is_answered_true() -> None:
    clock, redis, (a, _), judge, client = forwarded(2)
    judge.reply("join_room", {"client_id": "x", "room_id": "kitchen"}, "j1")  # B asks A (x's node)
    while not a.link.watching(b"test:room:kitchen"):  # A reads the ask: x joins, A subscribes ...
        redis.step()
    a.link.cut()  # ... and A's connections break before its answer is published
    a.link.restore()
    redis.run()
    assert client.admission.context["rooms"] == ["lobby", "kitchen"]  # in effect on A
    assert replies(judge) == [{"ok": True, "result": True}]
    passes(clock, redis, 3 * HEARTBEAT)
    assert replies(judge) == [{"ok": True, "result": True}]


def test_a_list_of_kept_clients_is_taken_only_from_a_node_heard_and_only_of_ids() -> None:
    _, redis, (a, b), judge, _ = forwarded(2)
    redis.run()
    channel = b"test:node:" + b.broker.node.encode()
    a.link.publish(channel, cluster_wire.encode("keep", a.broker.node, [1]))
    a.link.publish(channel, cluster_wire.encode("keep", "stranger", []))
    redis.run()
    assert b.broker.metrics.cluster_rejected == 2
    assert judge.load == 1 and judge.events(wire.DISCONNECTED) == []  # x, A's client, stays
    a.link.publish(channel, cluster_wire.encode("keep", a.broker.node, []))  # A says it no longer has x
    redis.run()
    assert judge.load == 0 and judge.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]


def test_a_node_whose_subscriptions_redis_never_all_confirms_still_rejoins_and_beats() -> None:
    clock, redis, (a, b) = nodes(2)
    a.link.cut()
    a.link.restore()
    redis.step()  # A's connections are up again; its subscriptions are on their way
    a.link.lag()
    a.link.watch(b"test:room:busy")  # and one more, never confirmed (on a busy node, some always wait)
    passes(clock, redis, 3 * HEARTBEAT)
    assert a.broker.node in b.broker.peers and b.broker.node in a.broker.peers
    assert a.broker.ready is False  # no backend anywhere
    b.backend()
    redis.run()
    assert a.broker.ready


def test_room_members_on_a_node_whose_subscriptions_redis_never_all_confirms_still_asks_the_others() -> None:
    clock, redis, a, backend_a = cook_and_guest()
    a.link.lag()
    a.link.watch(b"test:room:busy")  # never confirmed
    backend_a.reply("room_members", {"room_id": "lobby"}, "q1")
    clock.advance(QUERY_TIMEOUT / 2)  # A asks ...
    redis.run()
    clock.advance(QUERY_TIMEOUT / 2)  # ... and answers with what came when the query's time is up
    assert members(backend_a, "q1") == [["cook", "guest"]]


def test_a_node_not_rejoined_yet_gives_no_keep_ahead_of_the_goodbye_it_holds() -> None:
    _, redis, (a, b) = nodes(2)
    judge = a.backend()
    redis.run()
    client = b.connect(admitted(b, judge, "y", redis))  # y, B's client, served by A's backend
    redis.run()
    b.link.cut()  # a blip of B's connections: y's last events are held at B
    b.broker.client_message(client, "last words")
    b.broker.client_disconnected(client)
    b.link.restore()
    while b.link not in redis.subscribers.get(b"test:nodes", ()):
        redis.step()  # B is subscribed to the nodes channel again, not rejoined yet ...
    rejoin = redis._work.popleft()  # ... its SMEMBERS of its forgot key (command connection) waits,
    a.broker._beat()  # while A's regular beat reaches its subscriber connection (no order between the two)
    while redis._work:
        redis.step()
    assert not b.broker._joined
    redis.later(rejoin)  # B reads its forgot key, rejoins (answer beat) and sends what it held
    redis.run()
    assert judge.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE, wire.DISCONNECTED) == [
        (wire.NEW_CONNECTION, "y"), (wire.NEW_MESSAGE, "last words"), (wire.DISCONNECTED, "y")]


def test_events_held_for_a_deaf_node_are_not_flushed_on_a_beat_it_sent_before_it_went_deaf() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    b.broker._beat()  # B's regular beat: Redis runs it (SET, PUBLISH), its delivery to A waits in A's socket ...
    redis.step()
    redis.step()
    b.link.cut()  # ... and B's connections break
    a.broker.client_message(client, "lost")  # A's PUBLISH (on its other connection) ...
    redis._work.rotate(1)
    redis.step()  # ... answered first: no subscriber, counted lost, B doubted
    assert a.broker.peers.unconfirmed(b.broker.node) and a.broker.metrics.cluster_unpublished == 1
    a.broker.client_message(client, "held")  # held for B until it is back
    redis.run()  # A reads B's beat sent before the break: it does not count as B being back
    assert len(a.broker._held) == 1
    b.link.restore()
    passes(clock, redis, HEARTBEAT)
    assert len(a.broker.peers) == 1  # B was never forgotten
    assert judge.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "held")]
    assert a.broker.metrics.cluster_unpublished == 1


def test_a_node_doubted_after_its_answer_beat_is_confirmed_by_a_later_regular_beat() -> None:
    clock, redis, (a, b), judge, client = forwarded(2)
    passes(clock, redis, 0.8 * HEARTBEAT)
    a.broker.peers.doubt(b.broker.node)  # a loss counted after B's answer beat was read (two connections)
    a.broker.client_message(client, "held")
    passes(clock, redis, 0.4 * HEARTBEAT)  # B beats: within half a heartbeat of the loss, it may be older
    assert judge.events(wire.NEW_MESSAGE) == []
    passes(clock, redis, HEARTBEAT)  # its next beat: B hears
    assert judge.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "held")]


def test_a_keep_does_not_let_go_of_a_connected_client_whose_events_were_relayed_here() -> None:
    _, redis, (a, b, c), judge, client = forwarded(3)
    other = c.backend()
    redis.run()
    a.broker.client_message(client, "in flight")  # published to B ...
    b.broker.backend_lost(judge)  # ... whose last backend leaves: B relays it to C, as A's client's
    redis.run()
    assert other.events(wire.NEW_MESSAGE) == [(wire.NEW_MESSAGE, "in flight")]
    assert "x" not in a.broker._forwarded  # A unstuck x from B at B's beat; x has sent nothing since
    c.link.cut()  # a short blip of C's connections
    c.link.restore()
    redis.run()  # C's answer beat: A tells C which of its clients it still has there
    assert other.events(wire.DISCONNECTED) == []  # x, connected on A, stays
    a.broker.client_message(client, "after")
    a.broker.client_disconnected(client)
    redis.run()
    assert other.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE, wire.DISCONNECTED) == [
        (wire.NEW_MESSAGE, "in flight"), (wire.NEW_MESSAGE, "after"), (wire.DISCONNECTED, "x")]


def test_a_keep_lets_go_of_a_client_whose_next_events_go_elsewhere() -> None:
    _, redis, (a, b, c), judge, client = forwarded(3)
    other = c.backend()
    redis.run()
    a.broker.client_message(client, "in flight")
    b.broker.backend_lost(judge)  # relayed to C, as A's client's
    redis.run()
    a.backend()  # A has a backend now: x's next events go to it, not to C
    redis.run()
    c.link.cut()
    c.link.restore()
    redis.run()
    assert other.events(wire.DISCONNECTED) == [(wire.DISCONNECTED, "x")]  # no goodbye would come to C else


def test_a_client_whose_new_connection_no_node_heard_starts_again() -> None:
    clock, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    joining = admitted(a, judge, "x", redis)  # accepted by B's backend; A upgrades it ...
    b.link.cut()  # ... while B's connections blip
    client = a.connect(joining)  # x's new_connection: no subscriber on B's channel, lost (counted), B doubted
    redis.run()
    assert client.closed == LOST_START  # it connects again, to a backend that knows it
    a.broker.client_message(client, "hi")  # sent before the close took effect: dropped
    a.broker.client_disconnected(client)
    b.link.restore()
    passes(clock, redis, HEARTBEAT)
    assert judge.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE, wire.DISCONNECTED) == []
    assert judge.load == 0  # B let it go at A's keep


def test_room_members_asked_while_a_subscription_here_waits_past_half_the_query_time_lists_every_node() -> None:
    clock, redis, a, backend_a = cook_and_guest(kitchen=True)
    a.link.lag()  # A's subscriber connection falls behind (a busy node: some subscription always waiting)
    backend_a.reply("join_room", {"client_id": "guest", "room_id": "kitchen"}, "j1")  # its SUBSCRIBE waits
    backend_a.reply("room_members", {"room_id": "kitchen"}, "q1")
    redis.run()
    clock.advance(QUERY_TIMEOUT / 2)  # A asks anyway: Redis counts B alone, whether A counts or not is unknown
    redis.run()
    assert members(backend_a, "q1") == []  # so it does not trust the count: it waits for what comes ...
    clock.advance(QUERY_TIMEOUT / 2)
    assert members(backend_a, "q1") == [["cook", "guest"]]  # ... until the query's time is up


def test_a_request_carried_out_on_a_busy_node_is_answered_within_the_askers_time() -> None:
    clock, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    b.connect(admitted(b, backend_b, "cook", redis))
    b.connect(admitted(b, backend_b, "x", redis))
    redis.run()
    b.link.lag()  # B's subscriber connection falls behind (a busy node: some subscription always waiting)
    backend_b.reply("join_room", {"client_id": "cook", "room_id": "kitchen"}, "j1")  # B's own: its SUBSCRIBE waits
    backend_a.reply("set_metadata", {"client_id": "x", "metadata": {"k": 1}}, "m1")  # A's backend, about B's x
    redis.run()
    assert b.broker.rooms.client("x").admission.metadata == {"k": 1}  # carried out on B ...
    assert replies(backend_a) == [{"ok": True, "result": True}]  # ... and answered at once: nothing to wait for
    backend_a.reply("join_room", {"client_id": "x", "room_id": "hall"}, "j2")  # needs its room's SUBSCRIBE
    redis.run()
    assert replies(backend_a) == [{"ok": True, "result": True}]
    clock.advance(QUERY_TIMEOUT / 2)  # which B waits for half the asker's time at most
    redis.run()
    assert replies(backend_a) == [{"ok": True, "result": True}] * 2


def test_a_done_the_asking_node_could_not_hear_reaches_it_once_it_is_back() -> None:
    clock, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    b.connect(admitted(b, backend_b, "x", redis))
    redis.run()
    backend_a.reply("set_metadata", {"client_id": "x", "metadata": {"k": 1}}, "m1")  # about B's x
    redis.step()  # Redis delivers the ask to B ...
    a.link.cut()  # ... and A's connections blip while B carries it out
    redis.run()  # B's done: published to no subscriber, lost (counted)
    assert b.broker.rooms.client("x").admission.metadata == {"k": 1}
    assert b.broker.metrics.cluster_unpublished == 1
    a.link.restore()
    redis.run()  # A's answer beat: B sends its done again
    assert replies(backend_a) == [{"ok": True, "result": True}]
    passes(clock, redis, QUERY_TIMEOUT)
    assert replies(backend_a) == [{"ok": True, "result": True}]


def test_a_room_stays_watched_while_any_handshake_into_it_is_under_way() -> None:
    _, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    first, second = admitted(a, judge, "y", redis), admitted(a, judge, "z", redis)  # both into the lobby
    a.broker.abandon(first)
    redis.run()
    assert a.link.watching(b"test:room:lobby")  # z is still on its way into it
    a.broker.abandon(second)
    redis.run()
    assert not a.link.watching(b"test:room:lobby")


class BrokenClient(MemoryClient):
    """A client whose close fails."""

    def close(self, code: int, reason: str = "") -> None:
        raise RuntimeError("the socket went away")


def test_a_node_whose_acting_on_being_forgotten_fails_still_rejoins() -> None:
    clock, redis, (a, b) = nodes(2)
    judge = b.backend()
    redis.run()
    a.broker.client_connected(BrokenClient(admitted(a, judge, "x", redis)))  # x, forwarded to B's backend
    redis.run()
    a.link.cut()
    passes(clock, redis, 2 * HEARTBEAT)  # B forgets A
    a.link.restore()
    redis.run()  # A reads that B forgot it: closing x fails
    passes(clock, redis, HEARTBEAT)
    assert a.broker._joined and a.broker.node in b.broker.peers


def test_a_room_members_question_lost_with_the_connection_is_counted_and_logs_no_unhandled_error() -> None:
    clock, redis, (a, b) = nodes(2)
    backend_a = a.backend()
    b.backend()
    redis.run()
    a.connect(admitted(a, backend_a, "guest", redis))
    redis.run()
    a.link.lag()  # A's subscriber connection falls behind (a busy node: some subscription always waiting)
    backend_a.reply("join_room", {"client_id": "guest", "room_id": "kitchen"}, "j1")  # its SUBSCRIBE waits
    backend_a.reply("room_members", {"room_id": "kitchen"}, "q1")
    redis.run()
    clock.advance(QUERY_TIMEOUT / 2)  # A publishes its question anyway (not settled) ...
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        a.link.cut()  # ... and its connections break before Redis answers it
        redis.run()
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [event for event in events if "Unhandled error" in str(event.get("log_format", ""))] == []
    assert a.broker.metrics.cluster_unpublished == 1


def test_a_request_about_another_nodes_client_is_asked_there_while_a_handshake_with_its_id_is_claimed_here() -> None:
    _, redis, (a, b) = nodes(2)
    backend_a, backend_b = a.backend(), b.backend()
    redis.run()
    b.connect(admitted(b, backend_b, "x", redis))  # x connected on B
    outcome = a.handshake()  # x again, through A (a reconnection while the old connection lingers)
    redis.run()
    backend_a.accept(backend_a.requests()[-1], "x")  # reserved on A, its claim (SET NX) on its way to Redis ...
    backend_a.reply("set_metadata", {"client_id": "x", "metadata": {"k": 1}}, "m1")  # ... and a request about x
    redis.run()
    assert refused(outcome) == [("HandshakeRefused", 409)]  # B holds x
    client = b.broker.rooms.client("x")
    assert client is not None and client.admission.metadata == {"k": 1}
    assert replies(backend_a) == [{"ok": True, "result": True}]


def test_a_keep_owed_before_a_second_blip_still_waits_for_the_events_held_for_its_node() -> None:
    _, redis, (a, b), judge, client = forwarded(2)
    redis.run()
    a.link.cut()  # a first blip of A's connections: x's last events are held at A
    a.broker.client_message(client, "last words")
    a.broker.client_disconnected(client)
    a.link.restore()
    redis.step()  # A is connected again, its subscriptions under way
    while a.link.subscriptions._in_flight:
        redis.step()
    rejoin = redis._work.pop()  # A's SMEMBERS of its forgot key (its rejoin) waits on its command connection ...
    b.broker._beat()  # ... while B's regular beat reaches A's subscriber connection: B is owed A's keep
    redis.run()
    assert not a.broker._joined and a.broker._owed_keep == {b.broker.node}
    a.link.cut()  # a second blip before the rejoin: the SMEMBERS fails with the connection
    redis.later(rejoin)
    redis.run()
    a.link.restore()  # A rejoins (answer beat), then hears B again and sends what it held, then its keep
    redis.run()
    assert judge.events(wire.NEW_CONNECTION, wire.NEW_MESSAGE, wire.DISCONNECTED) == [
        (wire.NEW_CONNECTION, "x"), (wire.NEW_MESSAGE, "last words"), (wire.DISCONNECTED, "x")]

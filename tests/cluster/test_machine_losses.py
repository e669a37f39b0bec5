"""The forwarding machine when Redis loses one of its messages: what each loss costs (Clock, memory Redis)."""

from __future__ import annotations

from pystrands import wire
from tests.cluster.memory import HEARTBEAT, Node
from tests.cluster.test_machine import admitted, nodes, passes, refused, replies


def test_a_verdict_lost_while_the_asking_node_was_off_redis_gets_503_at_once() -> None:
    clock, redis, (a, b) = nodes(2, auth_timeout=10.0)
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
    a.link.cut()  # a short blip of A's connections while B's backend judges
    assert refused(outcome) == [("HandshakeRefused", 503)]  # its verdict could come while A is not subscribed
    judge.accept(judge.requests()[-1], "x")  # published to no subscriber: lost
    redis.run()
    a.link.restore()
    passes(clock, redis, HEARTBEAT)
    assert judge.load == 0  # B knows A did not hear it


def test_a_verdict_the_judging_node_could_not_publish_gets_503_once_that_node_is_back() -> None:
    _, redis, (a, b) = nodes(2, auth_timeout=10.0)
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
    b.link.cut()  # a short blip of B's connections while its backend judges
    judge.accept(judge.requests()[-1], "x")  # the verdict cannot be published
    b.link.restore()
    redis.run()
    assert len(a.broker.peers) == 1  # A never lost sight of B
    assert refused(outcome) == [("HandshakeRefused", 503)]  # at B's answer beat, not after auth_timeout
    assert judge.load == 0


def test_a_refusal_the_judging_node_could_not_publish_gets_503_once_that_node_is_back() -> None:
    _, redis, (a, b) = nodes(2, auth_timeout=10.0)
    judge = b.backend()
    redis.run()
    outcome = a.handshake()
    redis.run()
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

"""RedisLink against a real Redis, in this process: what a publish carries, and its answers."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pystrands.broker import redis_link
from pystrands.broker.claims import BATCH, Claims
from pystrands.broker.redis_link import RedisLink
from pystrands.broker.redis_url import parse_redis_url
from tests.cluster.support import RedisServer
from tests.support.ports import free_port


async def _linked(server: RedisServer, received: list[tuple[bytes, bytes]], states: list[bool] | None = None,
                  channel: bytes | None = b"chan") -> RedisLink:
    """A link subscribed to ``channel`` (if any), once both its connections are up and the subscription
    answered; what it receives goes to ``received``, each state it reports (up or not) to ``states``."""
    from twisted.internet import reactor

    up: Deferred[None] = Deferred()

    def state(ok: bool, why: str) -> None:
        if states is not None:
            states.append(ok)
        if ok and not up.called:
            up.callback(None)

    link = RedisLink(reactor, parse_redis_url(server.url), lambda channel, payload: received.append((channel, payload)),
                     state, max_delay=1.0)
    if channel is not None:
        link.watch(channel)
    link.start()
    await up
    await link.settled()
    return link


@pytest_twisted.ensureDeferred
async def test_a_publish_carries_any_bytes_and_answers_with_the_subscriber_count(redis: RedisServer) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    received: list[tuple[bytes, bytes]] = []
    link = await _linked(redis, received)
    try:
        payloads = [b"", b"\r\n$3\r\n*1\r\n", bytes(range(256)) * 40, "é🙂".encode()]
        counts = [await published for payload in payloads if (published := link.publish(b"chan", payload))]
        assert counts == [1, 1, 1, 1]
        assert await link.publish(b"nobody", b"x") == 0  # type: ignore[misc]
        assert await link.command(b"PING") == b"PONG"  # replies still pair with their commands
        for _ in range(50):
            if len(received) == len(payloads):
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert received == [(b"chan", payload) for payload in payloads]
    finally:
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_a_publish_refused_by_redis_or_cut_by_a_lost_connection_fails(redis: RedisServer) -> None:
    link = await _linked(redis, [])
    try:
        await link.command(b"ACL", b"SETUSER", b"default", b"-publish")  # type: ignore[misc]
        with pytest.raises(Exception, match="NOPERM"):
            await link.publish(b"chan", b"x")  # type: ignore[misc]
        assert await link.command(b"PING") == b"PONG"
        await link.command(b"CLIENT", b"PAUSE", b"5000", b"ALL")  # type: ignore[misc]
        cut = link.publish(b"chan", b"y")
        assert cut is not None
        redis.stop()
        with pytest.raises(Exception, match="Lost connection"):
            await cut
        assert link.publish(b"chan", b"z") is None
    finally:
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_publishes_redis_has_not_answered_are_capped_in_bytes(redis: RedisServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_link, "WAITING_LIMIT", 1_000_000)
    link = await _linked(redis, [])
    try:
        payload = b"x" * 100_000  # with b"PUBLISH" and b"chan": 100,011 bytes each
        sent = [link.publish(b"chan", payload) for _ in range(10)]  # no reactor turn: none answered yet
        assert [published is None for published in sent] == [False] * 9 + [True]
        assert [await published for published in sent[:9]] == [1] * 9
        assert await link.publish(b"chan", payload) == 1  # type: ignore[misc]  # answered: room again
    finally:
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_a_stalled_redis_is_found_by_the_probe_and_its_connections_cut(redis: RedisServer) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    states: list[bool] = []
    link = await _linked(redis, [], states, channel=None)
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        link.probe(0.3)
        for _ in range(40):
            if False in states:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert states == [True, False] and not link.up
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_claims_are_renewed_and_released_only_by_their_owner_through_the_lua_scripts(redis: RedisServer) -> None:
    link = await _linked(redis, [])
    try:
        def key(client_id: str) -> bytes:
            return b"c:claim:" + client_id.encode()

        mine, theirs = Claims(link, key, "mine", 60_000), Claims(link, key, "theirs", 60_000)
        assert await mine.take("x") == b"OK"
        assert await theirs.take("x") is None  # SET NX: held
        many = [f"id{number}" for number in range(2 * BATCH + 5)]  # three script calls
        assert await theirs.renew(["x", *many]) == ["x"]  # not taken from its owner ...
        assert await link.command(b"GET", key("x")) == b"mine"
        assert await link.command(b"GET", key(many[-1])) == b"theirs"  # ... the others made
        assert 0 < await link.command(b"PTTL", key(many[0])) <= 60_000  # type: ignore[operator]
        assert not await theirs.release("x")
        assert await link.command(b"GET", key("x")) == b"mine"  # not freed by another node
        await link.command(b"SCRIPT", b"FLUSH")  # type: ignore[misc]  # Redis forgets the scripts: EVAL again
        await link.command(b"DEL", key("x"))  # type: ignore[misc]  # as after a restart without persistence
        assert await mine.renew(["x"]) == []
        assert await link.command(b"GET", key("x")) == b"mine"  # made again
        assert await mine.release("x")
        assert await link.command(b"GET", key("x")) is None
    finally:
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_an_answer_that_came_while_this_process_was_blocked_saves_the_connection(redis: RedisServer) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import deferLater

    assert redis.process is not None
    pid = redis.process.pid

    class Stall(Protocol):
        """Blocks the reactor in a read, as a long callback does, while Redis answers."""

        def dataReceived(self, data: bytes) -> None:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.6)  # past the probe's deadline: the cut is overdue before Redis' answer is read

    states: list[bool] = []
    link = await _linked(redis, [], states, channel=None)
    stalling = reactor.listenTCP(0, Factory.forProtocol(Stall), interface="127.0.0.1")
    os.kill(pid, signal.SIGSTOP)  # the PONGs wait ...
    try:
        link.probe(0.3)
        await deferLater(reactor, 0.1, lambda: None)  # the PINGs are written
        with socket.create_connection(("127.0.0.1", stalling.getHost().port)) as trigger:
            trigger.sendall(b"x")  # ... and come while the reactor is blocked in reading this
            await deferLater(reactor, 1.0, lambda: None)
        assert states == [True] and link.up
    finally:
        os.kill(pid, signal.SIGCONT)
        await stalling.stopListening()
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_with_subscriptions_in_flight_leaves_no_unhandled_error(redis: RedisServer) -> None:
    """Ctrl-C of a node whose (un)subscriptions Redis had not answered yet: their loss is no error."""
    import gc

    from twisted.logger import globalLogPublisher

    unhandled: list[object] = []

    def observe(event: dict[str, object]) -> None:
        if "Unhandled error in Deferred" in str(event.get("log_format", "")):
            unhandled.append(event)

    link = await _linked(redis, [])
    await link.command(b"CLIENT", b"PAUSE", b"2000", b"ALL")  # type: ignore[misc]  # Redis holds its answers
    for number in range(3):
        link.watch(b"room:%d" % number)
    globalLogPublisher.addObserver(observe)
    try:
        await link.stop()  # the three subscriptions are lost with their connection
        gc.collect()  # a Deferred whose failure nobody handled says so when it is collected
    finally:
        globalLogPublisher.removeObserver(observe)
    assert unhandled == []
    assert link.settled().called  # each lost subscription counted as answered: nothing waits for them


@pytest_twisted.ensureDeferred
async def test_rediss_to_a_plain_redis_port_is_never_up_and_says_why(redis: RedisServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TLS the handshake happens with the first bytes: a link is up only once Redis answered a PING
    (a plain Redis waits for the end of the line its TLS hello would be: the attempt's timeout ends it)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    monkeypatch.setattr(redis_link, "CONNECT_TIMEOUT", 0.5)

    states: list[tuple[bool, str]] = []
    link = RedisLink(reactor, parse_redis_url(redis.url.replace("redis://", "rediss://")), lambda *_: None,
                     lambda up, why: states.append((up, why)), max_delay=1.0)
    link.start()
    try:
        await deferLater(reactor, 2.0, lambda: None)
        assert not link.up
        assert states and not any(up for up, _ in states), states
        assert "a failed TLS handshake? rediss:// needs Redis' TLS port" in states[0][1]
    finally:
        await link.stop()


@pytest_twisted.ensureDeferred
async def test_a_redis_that_wants_a_password_the_url_lacks_is_never_up_and_says_so(tmp_path: Path) -> None:
    """Without AUTH, Redis answers the PING that proves a connection with NOAUTH: that is the reason given."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    server = RedisServer(tmp_path / "redis", free_port(), "--requirepass", "s3cret")
    server.start()
    states: list[tuple[bool, str]] = []
    link = RedisLink(reactor, parse_redis_url(server.url), lambda *_: None, lambda up, why: states.append((up, why)),
                     max_delay=1.0)
    link.start()
    try:
        await deferLater(reactor, 1.0, lambda: None)
        assert not link.up and states and not any(up for up, _ in states), states
        assert states[0][1].startswith("Redis refused the first command: NOAUTH"), states
    finally:
        await link.stop()
        server.stop()

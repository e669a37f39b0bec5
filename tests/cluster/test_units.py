"""Deterministic tests of the cluster's parts: its messages, its view of the other nodes, reconnecting, settings."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from pystrands.broker import config, tap
from pystrands.broker.cluster import ClusterBroker
from pystrands.broker.cluster_wire import KINDS, ClusterWireError, decode, encode, starts_of
from pystrands.broker.config import BrokerConfig
from pystrands.broker.peers import Peers
from pystrands.broker.reconnect import Backoff, Reconnector
from pystrands.broker.redis_link import RedisLink, Subscriptions
from pystrands.broker.redis_url import RedisAddress, parse_redis_url, password_on_command_line
from pystrands.settings import BackendSettings

# -- cluster messages ---------------------------------------------------------------------

SAMPLES: dict[str, tuple[object, ...]] = {
    "room": ("hello",), "all": ("hello",), "to": ("hi",),
    "ask": ("a1", "join_room", {"client_id": "c", "room_id": "r"}), "done": ("a1", True),
    "beat": (2, True), "bye": (), "forgot": ("n2",), "event": (None, True, '{"action":"error"}\n'),
    "judge": ("r1", {"url": "/ws/x"}),
    "verdict": ("r1", 200, "", "c", "room", {"nick": "n"}), "abandon": ("c",), "keep": (["c"],), "who": ("q",),
    "members": ("q", [{"client_id": "c"}]),
}


def test_a_payload_over_the_largest_cluster_message_is_skipped_undecoded() -> None:
    broker = ClusterBroker(BrokerConfig(redis="redis://127.0.0.1:1"), MemoryReactorClock())
    largest = broker._payload_limit
    assert largest > 2 * BackendSettings.max_line_length  # an event of the largest line, escaped, fits
    broker._received(b"pystrands:nodes", b"[" * (largest + 1))  # nested past orjson's depth: refused anyway
    broker._received(b"pystrands:nodes", b'["beat", "n", 1, false]' + b" " * largest)
    assert broker.metrics.cluster_rejected == 2
    assert len(broker.peers) == 0


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_a_node_recognises_its_own_messages_by_their_start(kind: str) -> None:
    own = starts_of("0123456789abcdef")
    assert encode(kind, "0123456789abcdef", *SAMPLES[kind]).startswith(own)
    for other in ("0123456789abcde", "0123456789abcdef0", "x"):
        assert not encode(kind, other, *SAMPLES[kind]).startswith(own)


def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_messages_round_trip(kind: str) -> None:
    assert decode(encode(kind, "node1", *SAMPLES[kind])) == (kind, "node1", list(SAMPLES[kind]))


@pytest.mark.parametrize(("payload", "why"), [
    (b"", "not JSON"),
    (b"\xff", "not JSON"),
    (b'{"room": 1}', "not a JSON array"),
    (b'["room"]', "not a JSON array"),
    (b'["lounge", "n", "m"]', "unknown kind"),
    (b'[1, "n", "m"]', "unknown kind"),
    (b'["room", "", "m"]', "origin"),
    (b'["room", 7, "m"]', "origin"),
    (b'["room", "n"]', "1 fields, not 0"),
    (b'["room", "n", "m", "m"]', "1 fields, not 2"),
    (b'["room", "n", 5]', "field 1 must be str, not int"),
    (b'["beat", "n", true, true]', "field 1 must be int, not bool"),
    (b'["beat", "n", 1, 1]', "field 2 must be bool, not int"),
    (b'["event", "n", 3, true, "f"]', "field 1 must be str/NoneType"),
    (b"[" * 5000, "not JSON"),
])
def test_anything_else_is_refused_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(ClusterWireError, match=why.replace("/", ".")):
        decode(payload)


# -- the other nodes -----------------------------------------------------------------------

def test_peers_forget_a_silent_node() -> None:
    clock = Clock()
    peers = Peers(clock, silence=1.5)
    assert peers.heard("a", 0) is None
    assert peers.heard("b", 2) is None
    assert peers.with_backends() == ["b"]
    clock.advance(1.0)
    assert peers.heard("a", 1) == 0
    assert peers.with_backends() == ["a", "b"]
    clock.advance(0.5)
    assert peers.silent() == ["b"]
    assert "b" not in peers and "a" in peers and peers.backends("b") == 0
    clock.advance(0.9)
    assert peers.silent() == []
    peers.respite()  # after this node was cut off: everyone gets a full silence again, unconfirmed
    assert "a" in peers and peers.unconfirmed("a") and peers.backends("a") == 1 and peers.with_backends() == []
    clock.advance(1.4)
    assert peers.silent() == []
    assert peers.heard("a", 1) == 1 and not peers.unconfirmed("a") and peers.with_backends() == ["a"]
    clock.advance(1.5)
    assert peers.silent() == ["a"] and len(peers) == 0
    assert peers.forget("a") is False


# -- reconnecting ------------------------------------------------------------------------------

def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.25, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.25
    with pytest.raises(ValueError, match="initial"):
        Backoff(0, 1.0)


class Attempts:
    """The ``connect`` of a Reconnector: each call is an attempt the test settles."""

    def __init__(self) -> None:
        self.pending: list[Deferred[tuple[str, Deferred[None]]]] = []

    def __call__(self) -> Deferred[tuple[str, Deferred[None]]]:
        attempt: Deferred[tuple[str, Deferred[None]]] = Deferred()
        self.pending.append(attempt)
        return attempt


def test_reconnector_retries_with_backoff_and_reports_an_outage_once() -> None:
    clock, attempts, events = Clock(), Attempts(), []
    keeper = Reconnector(clock, attempts, lambda conn: events.append(("up", conn)),
                         lambda why: events.append(("down", why)), Backoff(0.25, 1.0))
    keeper.start()
    attempts.pending[0].errback(ConnectionRefusedError("refused"))
    clock.advance(0.24)
    assert len(attempts.pending) == 1
    clock.advance(0.01)
    attempts.pending[1].errback(ConnectionRefusedError("refused"))
    clock.advance(0.5)
    assert len(attempts.pending) == 3
    lost: Deferred[None] = Deferred()
    attempts.pending[2].callback(("conn", lost))
    assert keeper.connection == "conn"
    assert events[0][0] == "down" and events[1:] == [("up", "conn")]  # two failures, one report

    lost.callback(None)
    assert keeper.connection is None and events[-1] == ("down", "connection closed")
    clock.advance(0.25)  # the backoff started over after the success
    assert len(attempts.pending) == 4
    lost = Deferred[None]()
    attempts.pending[3].callback(("again", lost))
    keeper.stop()
    lost.callback(None)  # closed by its owner: not an outage
    assert events[-1] == ("up", "again") and keeper.connection is None
    keeper.start()
    keeper.stop()
    assert attempts.pending[4].called  # the attempt under way is cancelled
    clock.advance(10)
    assert len(attempts.pending) == 5


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "address"), [
    ("redis://localhost", RedisAddress("localhost")),
    ("redis://10.0.0.5:6380/3", RedisAddress("10.0.0.5", 6380, 3)),
    ("redis://:s%40cret@h/1", RedisAddress("h", db=1, password="s@cret")),
    ("redis://user:pw@h:1", RedisAddress("h", 1, password="pw", username="user")),
    ("rediss://[::1]:7000/", RedisAddress("::1", 7000, tls=True)),
])
def test_redis_urls(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


def test_a_redis_address_hides_its_password() -> None:
    assert str(parse_redis_url("rediss://user:pw@h:1/2")) == "rediss://user:***@h:1/2"
    assert "s3cret" not in repr(parse_redis_url("rediss://user:s3cret@h:1/2"))
    assert "s3cret" not in repr(BrokerConfig(redis="redis://:s3cret@h:1/2"))
    assert parse_redis_url("rediss://user:s3cret@h:1/2").password == "s3cret"


def test_a_password_on_the_command_line_is_found() -> None:
    url = "redis://:s3cret@h:1/2"
    assert password_on_command_line(url, ["pystrands", "server", "--redis", url])
    assert password_on_command_line(url, ["twistd", "pystrands-broker", f"--redis={url}"])
    assert not password_on_command_line(url, ["pystrands", "server"])  # from PYSTRAND_REDIS_URL
    assert not password_on_command_line("redis://h:1/2", ["pystrands", "server", "--redis", "redis://h:1/2"])


@pytest.mark.parametrize(("url", "why"), [
    ("http://h", "must start with redis:// or rediss://"),
    ("h:6379", "must start with redis://"),
    ("redis://", "names no host"),
    ("redis://:pw@/0", "names no host"),
    ("redis://h:99999", "malformed"),
    ("redis://h:port", "malformed"),
    ("redis://h/zero", "database after the host must be a number"),
    ("redis://h/70000", "out of range"),
    ("redis://h/0?timeout=1", "query"),
    ("redis://user@h", "no password"),
])
def test_bad_redis_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as error:
        BrokerConfig(redis=url)
    assert "pw" not in str(error.value)


def test_bad_cluster_settings() -> None:
    with pytest.raises(ValueError, match="needs the redis setting"):
        ClusterBroker(BrokerConfig(), Clock())
    with pytest.raises(TypeError, match="redis must be a redis:// or rediss:// URL, not int"):
        BrokerConfig(redis=6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cluster_name"):
        BrokerConfig(cluster_name="a b")
    with pytest.raises(ValueError, match="cluster_name"):
        BrokerConfig(cluster_name="")
    with pytest.raises(ValueError, match="cluster_heartbeat"):
        BrokerConfig(cluster_heartbeat=0)


def test_options_and_environment() -> None:
    options = config.Options(environ={"PYSTRAND_REDIS_URL": "redis://from-env:1/2"})
    options.parseOptions(["--redis", "redis://from-flag", "--cluster-name", "chat", "--cluster-heartbeat", "2"])
    broker = options["config"]
    assert (broker.redis, broker.cluster_name, broker.cluster_heartbeat) == ("redis://from-env:1/2", "chat", 2.0)
    with pytest.raises(usage.UsageError, match="PYSTRAND_REDIS_URL 'redis://:\\*\\*\\*@h/x'"):
        config.Options(environ={"PYSTRAND_REDIS_URL": "redis://:pw@h/x"}).parseOptions([])
    with pytest.raises(usage.UsageError, match="--redis 'ftp://h'"):
        tap.Options().parseOptions(["--redis", "ftp://h", "--ws-port", "0", "--tcp-port", "0"])


def test_the_command_line_stops_on_a_bad_url() -> None:
    result = subprocess.run([sys.executable, "-m", "pystrands", "server", "--redis", "redis://h:notaport"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--redis 'redis://h:notaport' is malformed" in result.stderr


def test_one_node_never_loads_the_cluster_code() -> None:
    code = ("import sys; from twisted.internet.task import Clock; from pystrands.broker.config import BrokerConfig;"
            " from pystrands.broker.service import _router; router = _router(BrokerConfig(), Clock());"
            " print(type(router).__name__,"
            " [m for m in ('txredisapi', 'pystrands.broker.cluster') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["Broker", "[]"]


# -- the link's outage reports, on a memory reactor ---------------------------------------------

class Reports:
    """The link's state changes, and the warnings and errors logged meanwhile."""

    def __init__(self) -> None:
        self.states: list[bool] = []
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event["log_level"] >= LogLevel.warn:
            self.lines.append(formatEvent(event))

    def state(self, up: bool, why: str) -> None:
        self.states.append(up)


def settle(reactor: MemoryReactorClock, redis_says: bytes | None) -> list[Any]:
    """Settle every pending attempt: refused (None), or connected and answered ``redis_says``; the protocols."""
    pending, reactor.tcpClients = reactor.tcpClients, []
    connectors, reactor.connectors = reactor.connectors, []
    protocols = []
    for (_, _, factory, _, _), connector in zip(pending, connectors, strict=True):
        if redis_says is None:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError("refused")))
            continue
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(redis_says)
        protocols.append(protocol)
    return protocols


def test_a_link_reports_an_outage_and_a_refused_login_once_each_until_connected() -> None:
    reactor, reports = MemoryReactorClock(), Reports()
    link = RedisLink(reactor, parse_redis_url("redis://:pw@127.0.0.1:6390/0"), lambda channel, payload: None,
                     reports.state, max_delay=1.0)
    globalLogPublisher.addObserver(reports)
    try:
        link.start()
        for _ in range(4):  # Redis is down: attempts every 0.25 s doubling to 1 s, one report
            settle(reactor, None)
            reactor.advance(1.0)
        assert reports.states == [False]
        for _ in range(3):  # Redis is up, and refuses the password: one line, however often
            for protocol in settle(reactor, b"-WRONGPASS invalid username-password pair\r\n"):
                protocol.connectionLost(Failure(ConnectionDone()))
            reactor.advance(1.0)
        assert reports.states == [False]
        refused = ("Redis redis://:***@127.0.0.1:6390/0 refused the cluster's connection: Redis error: could not"
                   " auth: WRONGPASS invalid username-password pair")
        assert [line for line in reports.lines if "refused the cluster's connection" in line] == [refused]
        connections = settle(reactor, b"+OK\r\n")  # the password fixed: both connections log in ...
        assert reports.states == [False] and not link.up  # ... and are up once Redis answers their PING
        for connection in connections:
            connection.dataReceived(b"+PONG\r\n")
        assert reports.states == [False, True] and link.up
        connections[0].connectionLost(Failure(ConnectionDone()))
        for _ in range(3):
            settle(reactor, None)
            reactor.advance(1.0)
        assert reports.states == [False, True, False]  # a new outage: told once again
    finally:
        globalLogPublisher.removeObserver(reports)
        link.stop()


def test_subscriptions_are_kept_once_each_and_settle_when_every_request_is_answered() -> None:
    sent: list[tuple[bytes, bytes]] = []
    connected = [True]

    def send(command: bytes, channel: bytes) -> bool:
        if connected[0]:
            sent.append((command, channel))
        return connected[0]

    book = Subscriptions(send)
    book.watch(b"b")
    book.watch(b"a")
    book.watch(b"a")  # kept once, asked once
    assert sent == [(b"SUBSCRIBE", b"b"), (b"SUBSCRIBE", b"a")] and book.watching(b"a")
    settled = book.settled()
    book.answered()
    assert not settled.called  # one answer still to come
    book.answered(Failure(ConnectionError("Lost connection")))  # lost with its connection: consumed, not raised
    assert settled.called and book.settled().called  # nothing waits: at once
    connected[0] = False
    book.unwatch(b"b")  # no connection: not sent, nothing to wait for, and no longer wanted
    assert book.settled().called and not book.watching(b"b")
    connected[0] = True
    sent.clear()
    book.watch(b"c")
    book.resubscribe()  # a new connection: everything wanted, in order
    assert sent == [(b"SUBSCRIBE", b"c"), (b"SUBSCRIBE", b"a"), (b"SUBSCRIBE", b"c")]

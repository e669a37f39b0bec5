"""Cluster nodes in one process on a ``Clock``: an in-memory stand-in for the Redis link, backends and clients.

For the deterministic tests of the forwarding machine. :class:`MemoryRedis`
stands behind the link's public face (:class:`~pystrands.broker.redis_link.Link`):
what the nodes send it is carried out in order, one step at a time, when the
test calls :meth:`MemoryRedis.run`, as one Redis would serve the nodes'
connections. It knows the pub/sub, the few key commands a node runs, and the
scripts of :mod:`pystrands.broker.claims` (in Python); the tests against a
real redis-server (``test_nodes.py``, ``test_faults.py``, ``test_link.py``)
check that a real Redis behaves so.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from pystrands import wire
from pystrands.broker import claims
from pystrands.broker.cluster import ClusterBroker
from pystrands.broker.config import BrokerConfig
from pystrands.broker.redis_link import LinkBase, Subscriptions
from pystrands.broker.redis_url import RedisAddress
from pystrands.broker.router import Admission, Handshake

#: The heartbeat of the nodes in these tests, in seconds.
HEARTBEAT = 1.0


class MemoryRedis:
    """One Redis in memory: channels, keys with expiry on ``clock``, and the work waiting for :meth:`run`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.subscribers: dict[bytes, set[MemoryLink]] = {}
        #: Key -> (a string, or a set's members; the time it expires at, if any).
        self.keys: dict[bytes, tuple[Any, float | None]] = {}
        #: Every command carried out, in order.
        self.log: list[tuple[bytes, ...]] = []
        self._work: deque[Callable[[], None]] = deque()

    def link(self, reactor: Any, address: RedisAddress, on_message: Callable[[bytes, bytes], None],
             on_state: Callable[[bool, str], None], max_delay: float) -> MemoryLink:
        """A node's link to this Redis (a ``LinkFactory``)."""
        return MemoryLink(self, address, on_message, on_state)

    def later(self, work: Callable[[], None]) -> None:
        self._work.append(work)

    def run(self) -> None:
        """Carry out everything sent so far, and what it causes, until nothing is left."""
        while self._work:
            self.step()

    def step(self) -> None:
        """Carry out the oldest piece of work waiting (one command, or one delivery to a subscriber)."""
        self._work.popleft()()

    def drop(self, link: MemoryLink) -> None:
        """A link's connections are gone: so are its subscriptions."""
        for links in self.subscribers.values():
            links.discard(link)

    def get(self, key: bytes) -> Any:
        value, expiry = self.keys.get(key, (None, None))
        if expiry is not None and expiry <= self.clock.seconds():
            del self.keys[key]
            return None
        return value

    def execute(self, args: tuple[bytes, ...]) -> Any:
        """One command, as Redis answers it."""
        self.log.append(args)
        name, rest = args[0].upper(), args[1:]
        if name == b"PUBLISH":
            channel, payload = rest
            links = sorted(self.subscribers.get(channel, ()), key=id)
            for link in links:
                self.later(lambda link=link: link.deliver(channel, payload))
            return len(links)
        if name == b"SET":
            key, value, *options = rest
            expiry = None
            if b"PX" in options:
                expiry = self.clock.seconds() + int(options[options.index(b"PX") + 1]) / 1000
            if b"NX" in options and self.get(key) is not None:
                return None
            self.keys[key] = (value, expiry)
            return b"OK"
        if name == b"GET":
            return self.get(rest[0])
        if name == b"SADD":
            members = self.get(rest[0]) or set()
            self.keys[rest[0]] = (members | set(rest[1:]), self.keys.get(rest[0], (None, None))[1])
            return len(self.keys[rest[0]][0]) - len(members)
        if name == b"SREM":
            members = self.get(rest[0]) or set()
            if members - set(rest[1:]):
                self.keys[rest[0]] = (members - set(rest[1:]), self.keys[rest[0]][1])
            else:
                self.keys.pop(rest[0], None)
            return len(members & set(rest[1:]))
        if name == b"SMEMBERS":
            return sorted(self.get(rest[0]) or ())
        if name == b"PEXPIRE":
            value = self.get(rest[0])
            if value is None:
                return 0
            self.keys[rest[0]] = (value, self.clock.seconds() + int(rest[1]) / 1000)
            return 1
        if name == b"DEL":
            return sum(self.keys.pop(key, None) is not None for key in rest)
        if name == b"PUBSUB" and rest[0] == b"NUMSUB":
            return [rest[1], len(self.subscribers.get(rest[1], ()))]
        if name == b"PING":
            return b"PONG"
        if name == b"EVAL":
            return self.evaluate(rest[0], rest[2:2 + int(rest[1])], rest[2 + int(rest[1]):])
        raise ValueError(f"the memory Redis does not know {args!r}")

    def evaluate(self, script: bytes, keys: tuple[bytes, ...], args: tuple[bytes, ...]) -> Any:
        """What the claims' Lua scripts do, in Python (test_link.py runs the scripts on a real Redis)."""
        if script == claims.RENEW:
            node, expiry = args
            taken = [key for key in keys if self.get(key) not in (None, node)]
            for key in keys:
                if key not in taken:
                    self.execute((b"SET", key, node, b"PX", expiry))
            return taken
        if script == claims.RELEASE:
            return self.execute((b"DEL", keys[0])) if self.get(keys[0]) == args[0] else 0
        raise ValueError(f"the memory Redis does not know the script {script!r}")


class MemoryLink(LinkBase):
    """The link of one node to a :class:`MemoryRedis`: the face of ``RedisLink``, in memory."""

    def __init__(self, redis: MemoryRedis, address: RedisAddress, on_message: Callable[[bytes, bytes], None],
                 on_state: Callable[[bool, str], None]) -> None:
        self.redis = redis
        self.address = address
        self.on_message = on_message
        self._on_state = on_state
        self.up = False
        self.subscriptions = Subscriptions(self._subscribe)
        #: While the node is told it is connected: the subscriptions, carried out after what it sends.
        self._held: list[Callable[[], None]] | None = None
        #: Which connection is up: work sent on an earlier one fails, as on a lost connection.
        self._connection = itertools.count()
        self._current = -1

    def start(self) -> None:
        self.redis.later(self._connected)

    def stop(self) -> Deferred[None]:
        self.up = False
        self._current = -1
        self.redis.drop(self)
        return succeed(None)

    def cut(self, why: str = "connection lost") -> None:
        """Both connections lost (Redis stopped, or the network to it broken)."""
        self.stop()
        self._on_state(False, why)

    def restore(self) -> None:
        """Connected again: told, and subscribed again to every channel it watches."""
        self.redis.later(self._connected)

    def _connected(self) -> None:
        """Both connections up: the node is told at once (as by ``RedisLink``), and the subscriptions,
        sent on the other connection, are carried out after what it sends when told (the worst order
        two connections allow)."""
        self._current = next(self._connection)
        self.up = True
        held = self._held = []
        self.subscriptions.resubscribe()
        self._held = None
        self._on_state(True, "")
        for work in held:
            self.redis.later(work)

    def lag(self) -> None:
        """The subscribed connection falls behind the other: (un)subscriptions wait for :meth:`catch_up`
        (two connections have no order between them: Redis may run a later publish first)."""
        self._held = []

    def catch_up(self) -> None:
        """The (un)subscriptions held by :meth:`lag` go to Redis."""
        held, self._held = self._held or [], None
        for work in held:
            self.redis.later(work)

    def command(self, *args: bytes | int | str) -> Deferred[Any] | None:
        if not self.up:
            return None
        sent = tuple(arg if isinstance(arg, bytes) else str(arg).encode() for arg in args)
        connection = self._current
        result: Deferred[Any] = Deferred()

        def carry_out() -> None:
            if connection != self._current:
                result.errback(ConnectionError("Lost connection"))
            else:
                result.callback(self.redis.execute(sent))

        self.redis.later(carry_out)
        return result

    def script(self, source: bytes, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Deferred[Any] | None:
        return self.command(b"EVAL", source, len(keys), *keys, *args)

    def probe(self, timeout: float) -> None:
        """A memory Redis never stalls: nothing to find."""

    def _subscribe(self, command: bytes, channel: bytes) -> bool:
        """Redis carries out a (un)subscription in turn (logged as a command, to check the order of things)."""
        if not self.up:
            return False

        def carry_out() -> None:
            self.redis.log.append((command, channel))
            links = self.redis.subscribers.setdefault(channel, set())
            if command == b"SUBSCRIBE" and self.up:
                links.add(self)
            else:
                links.discard(self)
            self.subscriptions.answered()

        if self._held is not None:
            self._held.append(carry_out)
        else:
            self.redis.later(carry_out)
        return True

    def deliver(self, channel: bytes, payload: bytes) -> None:
        if self.up and self in self.redis.subscribers.get(channel, ()):
            self.on_message(channel, payload)


class MemoryBackend:
    """A backend connection of a node: every frame the node writes to it, decoded."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.load = 0
        self.congested = False
        self.frames: list[wire.Frame] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.frames.append(wire.decode_frame(frame))

    def close(self) -> None:
        self.closed = True

    def events(self, *actions: str) -> list[tuple[str, Any]]:
        """(action, the context's client_id, or the message of a new_message) of the frames of ``actions``."""
        return [(frame.action, frame.params["message"] if frame.action == wire.NEW_MESSAGE
                 else frame.params["context"]["client_id"])
                for frame in self.frames if frame.action in actions]

    def requests(self) -> list[wire.Frame]:
        return [frame for frame in self.frames if frame.action == wire.CONNECTION_REQUEST]

    def accept(self, request: wire.Frame, client_id: str, room_id: str = "lobby") -> None:
        """Answer a connection_request: accepted, as ``client_id`` in ``room_id``."""
        self.reply(wire.RESPONSE, {"accepted": True, "client_id": client_id, "room_id": room_id, "metadata": None},
                   request.request_id)

    def reply(self, action: str, params: dict[str, Any], request_id: str | None = None) -> None:
        """Write a frame to the node, as the backend."""
        line = wire.encode_frame(action, params, request_id)
        self.node.broker.backend_frame(wire.decode_frame(line), line, self)


class MemoryClient:
    """A WebSocket client of a node: the texts it got, and how it was closed."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    def send_text(self, message: str) -> None:
        self.texts.append(message)

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def go_on(self) -> None:
        """Never told to wait: its backends are never congested."""


class Node:
    """A ClusterBroker on the test's clock and memory Redis, started."""

    def __init__(self, redis: MemoryRedis, clock: Clock | None = None, **settings: Any) -> None:
        """``clock``: the node's own (one the test does not advance: a node whose loop stalls); else Redis'."""
        config = BrokerConfig(redis="redis://memory", cluster_name="test", cluster_heartbeat=HEARTBEAT, **settings)
        self.broker = ClusterBroker(config, clock or redis.clock, redis.link)
        self.link: MemoryLink = self.broker.link  # type: ignore[assignment]
        self.broker.start()

    def backend(self) -> MemoryBackend:
        backend = MemoryBackend(self)
        self.broker.backend_ready(backend)
        return backend

    def handshake(self, path: str = "/ws/lobby") -> list[Any]:
        """Start a handshake; the list its outcome lands in (an Admission, or the HandshakeRefused)."""
        outcome: list[Any] = []
        self.broker.request_connection(Handshake({}, path, "127.0.0.1", {})).addBoth(
            lambda result: outcome.append(getattr(result, "value", result)))
        return outcome

    def connect(self, admission: Admission) -> MemoryClient:
        """The WebSocket of an accepted handshake is open."""
        client = MemoryClient(admission)
        self.broker.client_connected(client)
        return client

"""A node's link to Redis: one connection that publishes and runs commands, one that is subscribed.

The typed face of ``txredisapi`` (which has no annotations; docs/CLUSTER.md
says why it was chosen): the rest of the broker sees :class:`RedisLink`
only. txredisapi parses RESP (with ``hiredis`` when installed); this module
connects through the given reactor, reconnects with a backoff
(:mod:`.reconnect`), re-subscribes after each reconnection, and never
queues: a publish while Redis is unreachable returns None at once, for the
caller to count, instead of piling up in memory.

Everything is bytes (``charset=None``): data that is not UTF-8 on a
channel reaches :attr:`on_message` as it came, for the caller to judge.
txredisapi imports the global reactor when imported, so it is imported
when a link is made (the reactor is chosen by then), not with this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .outbox import send_at_once
from .reconnect import Backoff, Reconnector
from .redis_url import RedisAddress

__all__ = ["CLOSE_TIMEOUT", "WAITING_LIMIT", "Link", "LinkBase", "LinkFactory", "RedisLink", "Subscriptions"]

log = Logger()

#: Seconds a connection attempt to Redis may take.
CONNECT_TIMEOUT = 5.0
#: Seconds the connections get to close when the node stops (what is written flushed), before they are cut.
CLOSE_TIMEOUT = 2.0
#: Bytes of commands Redis may leave unanswered; past it a publish is refused (and counted lost), not queued.
WAITING_LIMIT = 64 * 1024 * 1024


class Link(Protocol):
    """What a cluster node uses of its link to Redis: :class:`RedisLink`'s public face (the Clock
    tests put an in-memory stand-in with the same face in its place)."""

    address: RedisAddress
    #: True while both connections are up.
    up: bool

    def start(self) -> None:
        """Connect, and keep connected."""

    def stop(self) -> Deferred[None]:
        """Disconnect for good; fires once closed."""

    def command(self, *args: bytes | int | str) -> Deferred[Any] | None:
        """Run a command: its reply; None (nothing sent) while Redis is unreachable."""

    def fire(self, *args: bytes | int | str) -> None:
        """Run a command whose outcome does not matter."""

    def script(self, source: bytes, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Deferred[Any] | None:
        """Run a Lua script on ``keys`` with ``args``: its reply; None (nothing sent) while unreachable."""

    def publish(self, channel: bytes, payload: bytes) -> Deferred[int] | None:
        """PUBLISH: the count of subscribers that got it; None (not sent) while unreachable."""

    def probe(self, timeout: float) -> None:
        """Cut a connection that does not answer within ``timeout`` seconds."""

    def watch(self, channel: bytes) -> None:
        """Be subscribed to ``channel``, across reconnections."""

    def unwatch(self, channel: bytes) -> None:
        """No longer be subscribed to ``channel``."""

    def watching(self, channel: bytes) -> bool:
        """True if ``channel`` is one of the subscriptions."""

    def settled(self) -> Deferred[None]:
        """Fires once Redis has answered every (un)subscription sent so far."""


#: Makes a node's link: (reactor, address, on_message(channel, payload), on_state(up, why), max_delay).
LinkFactory = Callable[[IReactorTime, RedisAddress, Callable[[bytes, bytes], None], Callable[[bool, str], None], float],
                       Link]


@functools.cache
def _protocols() -> tuple[type[Any], type[Any]]:
    """txredisapi's protocols: the one for commands, and one for pub/sub that hands messages to its link."""
    import txredisapi  # type: ignore[import-untyped]  # no annotations: this module is its typed face

    class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]  # txredisapi is untyped
        """The subscribed connection: each pub/sub message goes to the link."""

        link: RedisLink

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            """A message on a subscribed channel (bytes, as Redis sent it)."""
            self.link.on_message(channel, message)

    return txredisapi.RedisProtocol, Subscriber


class _Factory(Factory[Any]):
    """Builds one txredisapi protocol per connection, logged in to the address's user and database."""

    isLazy = False
    noisy = False

    def __init__(self, address: RedisAddress, protocol: type[Any], link: RedisLink) -> None:
        self.address = address
        self._protocol = protocol
        self._link = link

    def buildProtocol(self, addr: Any) -> Any:
        """A protocol speaking bytes, with the URL's password and database."""
        address = self.address
        connection = self._protocol(charset=None, password=address.password, dbid=address.db or None,
                                    convertNumbers=False, username=address.username)
        connection.factory = self
        connection.link = self._link
        return connection

    # txredisapi's protocol calls these when AUTH or SELECT fails, then drops the connection.
    def stopTrying(self) -> None:
        """Redis refused the login: keep retrying (an operator may fix Redis), but say so."""

    def connectionError(self, why: str) -> None:
        """Redis refused the login: the link logs it (once until it is connected)."""
        self._link.refused(why)


class Subscriptions:
    """The channels a link keeps subscribed across reconnections, and who waits for Redis to confirm them.

    A link's bookkeeping apart from its connection, so that every link (the
    tests' in-memory one too) keeps it alike. ``send(command, channel)`` sends
    one SUBSCRIBE or UNSUBSCRIBE, False when no connection takes it; the link
    calls :meth:`answered` once Redis has answered one it sent (or the
    connection that carried it is lost).
    """

    def __init__(self, send: Callable[[bytes, bytes], bool]) -> None:
        self._send = send
        self._wanted: set[bytes] = set()
        self._in_flight = 0
        self._settling: list[Deferred[None]] = []

    def watch(self, channel: bytes) -> None:
        """Be subscribed to ``channel`` from now on, across reconnections."""
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._request(b"SUBSCRIBE", channel)

    def unwatch(self, channel: bytes) -> None:
        """No longer be subscribed to ``channel``."""
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._request(b"UNSUBSCRIBE", channel)

    def watching(self, channel: bytes) -> bool:
        """True if ``channel`` is one of the subscriptions."""
        return channel in self._wanted

    def resubscribe(self) -> None:
        """A new connection: subscribe to every channel again (sorted, so that the order is repeatable)."""
        for channel in sorted(self._wanted):
            self._request(b"SUBSCRIBE", channel)

    def settled(self) -> Deferred[None]:
        """Fires once Redis has answered every (un)subscription sent so far (at once if none waits)."""
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._settling.append(waiter)
        return waiter

    def answered(self, outcome: object = None) -> None:
        """One (un)subscription answered, or lost with its connection: its ``outcome`` is consumed (a lost
        one is sent again by :meth:`resubscribe` on the next connection, so its failure matters to no one)."""
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._settling = self._settling, []
            for waiter in waiters:
                waiter.callback(None)

    def _request(self, command: bytes, channel: bytes) -> None:
        self._in_flight += 1  # counted first: an answer may come back at once (a connection already lost)
        if not self._send(command, channel):
            self.answered()


class LinkBase:
    """What every link answers alike from its :meth:`command` and its :class:`Subscriptions`."""

    subscriptions: Subscriptions

    def command(self, *args: bytes | int | str) -> Deferred[Any] | None:
        """Run a Redis command; None (nothing sent) while Redis is unreachable."""
        raise NotImplementedError

    def fire(self, *args: bytes | int | str) -> None:
        """Run a command whose outcome does not matter (skipped while Redis is unreachable)."""
        result = self.command(*args)
        if result is not None:
            result.addErrback(lambda _: None)

    def publish(self, channel: bytes, payload: bytes) -> Deferred[int] | None:
        """PUBLISH; fires with the number of subscribers that got it. None (not sent) while unreachable."""
        return self.command(b"PUBLISH", channel, payload)

    def watch(self, channel: bytes) -> None:
        """Be subscribed to ``channel`` from now on, across reconnections."""
        self.subscriptions.watch(channel)

    def unwatch(self, channel: bytes) -> None:
        """No longer be subscribed to ``channel``."""
        self.subscriptions.unwatch(channel)

    def watching(self, channel: bytes) -> bool:
        """True if ``channel`` is one of the subscriptions."""
        return self.subscriptions.watching(channel)

    def settled(self) -> Deferred[None]:
        """Fires once Redis has answered every (un)subscription sent so far (at once if none waits)."""
        return self.subscriptions.settled()


class RedisLink(LinkBase):
    """Two connections to one Redis, kept up until :meth:`stop`.

    ``on_message(channel, payload)`` gets every message of the subscribed
    channels; ``on_state(up, why)`` is called when both connections become
    usable and when either is lost (or the first attempt fails).
    """

    def __init__(self, reactor: Any, address: RedisAddress, on_message: Callable[[bytes, bytes], None],
                 on_state: Callable[[bool, str], None], max_delay: float) -> None:
        self.address = address
        self.on_message = on_message
        self._on_state = on_state
        self.subscriptions = Subscriptions(self._subscribe)
        #: Bytes of the commands sent and not answered yet.
        self._waiting = 0
        self._reactor = reactor
        endpoint = _endpoint(reactor, address)
        commands, subscriber = _protocols()
        self._commands: Reconnector[Any] = Reconnector(
            reactor, lambda: _connect(endpoint, _Factory(address, commands, self), reactor),
            self._command_up, self._down, Backoff(min(0.25, max_delay), max_delay))
        self._subscriber: Reconnector[Any] = Reconnector(
            reactor, lambda: _connect(endpoint, _Factory(address, subscriber, self), reactor),
            self._subscriber_up, self._down, Backoff(min(0.25, max_delay), max_delay))
        self.up = False
        self._down_told = False
        self._refusal_told = False

    def start(self) -> None:
        """Connect both, and keep them connected."""
        self._commands.start()
        self._subscriber.start()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close both connections (cut after CLOSE_TIMEOUT); fires once closed."""
        self._commands.stop()
        self._subscriber.stop()
        closing = [self._close(connection) for connection in (self._commands.connection, self._subscriber.connection)
                   if connection is not None]
        return gatherResults(closing).addCallback(lambda _: None) if closing else succeed(None)

    def _close(self, connection: Any) -> Deferred[None]:
        gone: Deferred[Any] = connection.whenDisconnected()
        connection.transport.loseConnection()
        cut = self._reactor.callLater(CLOSE_TIMEOUT, connection.transport.abortConnection)

        def closed(_: object) -> None:
            if cut.active():
                cut.cancel()

        return gone.addCallback(closed)

    # -- publishing and commands --------------------------------------------------

    def command(self, *args: bytes | int | str) -> Deferred[Any] | None:
        """Run a Redis command; None (nothing sent) while Redis is unreachable, or while the bytes of
        the commands it has not answered yet would pass WAITING_LIMIT (a stalled Redis)."""
        return self._run(lambda connection: connection.execute_command(*args), args)

    def script(self, source: bytes, keys: Sequence[bytes], args: Sequence[bytes | int]) -> Deferred[Any] | None:
        """Run a Lua script (txredisapi's ``eval``: EVALSHA once this connection has sent it, EVAL
        before or when Redis no longer knows it); None as :meth:`command`."""
        return self._run(lambda connection: connection.eval(source, list(keys), list(args)), (source, *keys, *args))

    def _run(self, send: Callable[[Any], Deferred[Any]], args: Sequence[bytes | int | str]) -> Deferred[Any] | None:
        """``send`` on the command connection, counting the bytes of ``args`` until Redis answers."""
        connection = self._commands.connection
        if connection is None or not self.up:
            return None
        size = sum(len(arg) for arg in args if isinstance(arg, bytes))
        if self._waiting + size > WAITING_LIMIT:
            return None
        self._waiting += size
        return send(connection).addBoth(self._unwait, size)

    def _unwait(self, result: object, size: int) -> object:
        self._waiting -= size
        return result

    def probe(self, timeout: float) -> None:
        """PING both connections; one that does not answer within ``timeout`` seconds is cut, so that
        a stalled Redis (connected, silent) is reported and reconnected to as a lost one is."""
        for connection in (self._commands.connection, self._subscriber.connection):
            if connection is not None:
                cut = _Cut(self._reactor, timeout, connection.transport)
                connection.execute_command(b"PING", apply_timeout=False).addBoth(cut.call_off)

    # -- subscriptions ------------------------------------------------------------

    def _subscribe(self, command: bytes, channel: bytes) -> bool:
        # One channel per command: txredisapi pairs one reply with each command.
        connection = self._subscriber.connection
        if connection is None:
            return False
        connection.execute_command(command, channel, apply_timeout=False).addBoth(self.subscriptions.answered)
        return True

    # -- connection states --------------------------------------------------------

    def _command_up(self, connection: Any) -> None:
        self._check_up()

    def _subscriber_up(self, connection: Any) -> None:
        self.subscriptions.resubscribe()
        self._check_up()

    def _check_up(self) -> None:
        if not self.up and self._commands.connection is not None and self._subscriber.connection is not None:
            self.up = True
            self._down_told = self._refusal_told = False
            self._on_state(True, "")

    def refused(self, why: str) -> None:
        """Redis refused a connection's AUTH or SELECT: log it once until connected (it is retried)."""
        if not self._refusal_told:
            self._refusal_told = True
            log.error("Redis {address} refused the cluster's connection: {why}", address=str(self.address), why=why)

    def _down(self, why: str) -> None:
        """Either connection lost, or an attempt failed: told once until both are up again."""
        self.up = False
        if not self._down_told:
            self._down_told = True
            self._on_state(False, why)


class _Cut:
    """Cuts a connection ``timeout`` seconds from now unless called off (by its answer) first.

    Decided one reactor turn after the timer fires: when this process was blocked (a long callback),
    the overdue timers run before the sockets are read, and an answer that came meanwhile must be
    read first.
    """

    def __init__(self, reactor: Any, timeout: float, transport: Any) -> None:
        self._reactor = reactor
        self._transport = transport
        self._call: Any = reactor.callLater(timeout, self._decide)

    def _decide(self) -> None:
        self._call = self._reactor.callLater(0, self._transport.abortConnection)

    def call_off(self, result: object) -> None:
        """An answer (or the connection's loss): no cut."""
        if self._call.active():
            self._call.cancel()


def _endpoint(reactor: Any, address: RedisAddress) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, address.host, address.port,
                                                       timeout=CONNECT_TIMEOUT)
    if address.tls:
        from twisted.internet.ssl import optionsForClientTLS  # needs pyOpenSSL: the "tls" extra

        endpoint = wrapClientTLS(optionsForClientTLS(address.host), endpoint)
    return endpoint


def _connect(endpoint: IStreamClientEndpoint, factory: _Factory, reactor: Any) -> Deferred[tuple[Any, Deferred[None]]]:
    """Connect, log in (AUTH, SELECT), see Redis answer a PING, then give the connection and its loss.

    The PING proves the connection: over TLS the handshake happens only once bytes flow, so a
    ``rediss://`` URL naming a plain Redis port connects, then fails with the first command. Without
    an answer within CONNECT_TIMEOUT the connection is cut and the attempt fails; an error answer
    (NOAUTH: Redis wants a password the URL lacks) fails it with Redis' words.
    """

    def connected(connection: Any) -> Deferred[tuple[Any, Deferred[None]]]:
        send_at_once(connection.transport)  # a publish waits for no acknowledgement of the one before
        lost: Deferred[None] = connection.whenDisconnected().addCallback(lambda _: None)
        either: Deferred[tuple[Any, Deferred[None]]] = Deferred()
        cut = _Cut(reactor, CONNECT_TIMEOUT, connection.transport)

        def ready(_: object) -> None:
            cut.call_off(None)
            if not either.called:
                either.callback((connection, lost))

        def refused(failure: Failure) -> None:
            cut.call_off(None)
            if connection.connected and not either.called:  # an error answer (a lost connection: ``closed``)
                either.errback(ConnectionError(f"Redis refused the first command: {failure.getErrorMessage()}"))
                connection.transport.abortConnection()

        def closed(_: object) -> None:
            # A connection lost while logging in fails the attempt instead of hanging it.
            cut.call_off(None)
            if not either.called:
                hint = " (a failed TLS handshake? rediss:// needs Redis' TLS port)" if factory.address.tls else ""
                either.errback(ConnectionError(f"Redis closed the connection before it answered{hint}"))

        logged_in = connection.whenConnected()
        logged_in.addCallback(lambda _: connection.execute_command(b"PING", apply_timeout=False))
        logged_in.addCallbacks(ready, refused)
        connection.whenDisconnected().addCallback(closed)
        return either

    return endpoint.connect(factory).addCallback(connected)

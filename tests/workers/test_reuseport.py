"""The ``pystrands-reuseport`` endpoint two workers listen through, and the options each worker is given."""

from __future__ import annotations

import itertools
import socket

import pytest
import pytest_twisted
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol

from pystrands.broker.config import Options
from pystrands.broker.workers import worker_arguments


class Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(self.factory.greeting)  # type: ignore[attr-defined]
        self.transport.loseConnection()


def greeter(greeting: bytes) -> Factory:
    factory = Factory.forProtocol(Greeter)
    factory.greeting = greeting  # type: ignore[attr-defined]
    return factory


@pytest_twisted.ensureDeferred
async def test_two_listeners_share_one_port_and_both_take_connections() -> None:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    first = await serverFromString(reactor, "pystrands-reuseport:0:interface=127.0.0.1").listen(greeter(b"1"))
    port = first.getHost().port
    second = await serverFromString(reactor, f"pystrands-reuseport:{port}:interface=127.0.0.1").listen(greeter(b"2"))

    def greetings() -> set[bytes]:
        seen = set()
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                seen.add(client.recv(1))
            if len(seen) == 2:
                break
        return seen

    try:
        assert await deferToThread(greetings) == {b"1", b"2"}
    finally:
        await first.stopListening()
        await second.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_port_held_without_reuseport_cannot_be_shared() -> None:
    from twisted.internet import reactor

    with socket.create_server(("127.0.0.1", 0)) as plain:
        port = plain.getsockname()[1]
        with pytest.raises(CannotListenError, match=f"127.0.0.1:{port}: .*Address already in use"):
            await serverFromString(reactor, f"pystrands-reuseport:{port}:interface=127.0.0.1").listen(greeter(b""))


def test_a_malformed_endpoint_string_is_refused() -> None:
    from twisted.internet.testing import MemoryReactor

    with pytest.raises(ValueError, match="pystrands-reuseport needs a port number and a whole backlog, not 'abc'"):
        serverFromString(MemoryReactor(), "pystrands-reuseport:abc")


def test_workers_get_every_option_but_the_worker_count_and_the_ports() -> None:
    options = Options(environ={})
    options.parseOptions(["--workers", "3", "--redis", "redis://127.0.0.1:6379/2", "--ws-port", "9000",
                          "--queue-size", "5", "--metrics", "--cluster-name", "blue"])
    arguments = worker_arguments(options)
    assert "--workers" not in arguments and "--ws-port" not in arguments and "--tcp-port" not in arguments
    assert "--redis" not in arguments  # the supervisor gives it in their environment
    pairs = dict(itertools.pairwise(arguments))
    assert pairs["--queue-size"] == "5"
    assert pairs["--cluster-name"] == "blue"
    assert "--metrics" in arguments
    again = Options(environ={})
    again.parseOptions(arguments)  # what a worker parses is a valid command line, the same settings
    assert again["config"].queue_size == 5 and again["config"].metrics and again["config"].workers == 1


def test_an_option_from_the_environment_stays_in_the_environment() -> None:
    """The workers inherit the environment: a Redis password there is not put on their command lines."""
    options = Options(environ={"PYSTRAND_REDIS_URL": "redis://:secret@127.0.0.1:6379/0", "PYSTRAND_QUEUE_SIZE": "7"})
    options.parseOptions(["--workers", "2", "--queue-size", "5"])
    arguments = worker_arguments(options)
    assert not any("secret" in argument for argument in arguments), arguments
    assert "--redis" not in arguments and "--queue-size" not in arguments
    assert options["config"].redis == "redis://:secret@127.0.0.1:6379/0" and options["config"].queue_size == 7

"""The private Twisted and asyncio attributes pystrands._internals reads: still there, and each function's job.

When an upgrade removes one of these attributes, the function falls back to
a public way that works but is slower or less tidy; test_private_attribute_still_exists
then fails naming the attribute, so that the upgrade is a decision. setup.cfg
bounds Twisted to the versions this module has passed on.

Passed on (2026-11-30, each in a throwaway venv): Twisted 26.10.0 with Python
3.10.13 (with websockets 16: 17 needs 3.11), 3.11.7, 3.12.1 and 3.13.0; Twisted 26.4.0, 25.5.0 and 24.11.0 with
Python 3.11.7. setup.cfg keeps Twisted >=26.10 because the rest of the library
(its annotations, mypy's settings) is built and tested on 26.10 only.
"""

from __future__ import annotations

import ast
import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import threadable

from pystrands import _internals

#: Whose attribute, as _internals.PRIVATE_ATTRIBUTES names it -> a fixture name giving such an object.
OWNERS = {
    "ReactorBase": "epoll_reactor",
    "EPollReactor": "epoll_reactor",
    "AsyncioSelectorReactor": "asyncio_reactor",
    "BaseEventLoop": "loop",
    "Handle": "handle",
    "asyncio": "asyncio_module",
    "FileDescriptor": "file_descriptor",
}


@pytest.fixture
def epoll_reactor() -> Iterator[EPollReactor]:
    reactor = EPollReactor()
    yield reactor
    _internals.release_reactor(reactor)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    new_loop = asyncio.new_event_loop()
    yield new_loop
    new_loop.close()


@pytest.fixture
def asyncio_reactor(loop: asyncio.AbstractEventLoop) -> Iterator[AsyncioSelectorReactor]:
    reactor = AsyncioSelectorReactor(loop)
    yield reactor
    _internals.release_reactor(reactor)


@pytest.fixture
def handle(loop: asyncio.AbstractEventLoop) -> Iterator[asyncio.Handle]:
    scheduled = loop.call_soon(print)
    yield scheduled
    scheduled.cancel()


@pytest.fixture
def asyncio_module() -> Any:
    return asyncio


@pytest.fixture
def file_descriptor(epoll_reactor: EPollReactor) -> FileDescriptor:
    return FileDescriptor(epoll_reactor)


ATTRIBUTES = [(function, owner_and_name)
              for function, names in _internals.PRIVATE_ATTRIBUTES.items() for owner_and_name in names]


def test_every_owner_has_an_object_to_check() -> None:
    owners = {owner_and_name.split(".")[0] for _, owner_and_name in ATTRIBUTES}
    assert owners == set(OWNERS), "PRIVATE_ATTRIBUTES and this module's OWNERS must name the same owners"


@pytest.mark.parametrize(("function", "owner_and_name"), ATTRIBUTES, ids=[name for _, name in ATTRIBUTES])
def test_private_attribute_still_exists(function: str, owner_and_name: str, request: pytest.FixtureRequest) -> None:
    if function == "run_first_step_now" and sys.version_info >= (3, 12):
        pytest.skip("Python 3.12 and later start tasks eagerly: the library does not call run_first_step_now")
    owner, name = owner_and_name.split(".")
    found = request.getfixturevalue(OWNERS[owner])
    assert hasattr(found, name), (
        f"{owner_and_name} is gone (Twisted {version('twisted')}, Python {sys.version.split()[0]}): "
        f"pystrands._internals.{function} now silently takes its fallback. Read its docstring, decide whether "
        f"the fallback will do, then update the function, PRIVATE_ATTRIBUTES and the Twisted bound in setup.cfg."
    )


def run_in_thread(reactor: EPollReactor, when_running: Callable[[], Any]) -> Any:
    """Run ``reactor`` in a thread until ``when_running``, called on it, has returned; its result."""
    results: list[Any] = []

    def call_then_stop() -> None:
        results.append(when_running())
        reactor.stop()

    reactor.callWhenRunning(call_then_stop)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False})
    thread.start()
    thread.join(10.0)
    assert not thread.is_alive(), "the reactor did not stop"
    return results[0]


def test_decline_io_thread_leaves_the_title_to_the_application_reactor(
        epoll_reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch) -> None:
    # The title is this thread's here: an earlier test's reactor thread may have held it, and a new
    # thread can be given that dead thread's id.
    monkeypatch.setattr(threadable, "ioThread", threading.get_ident())
    _internals.decline_io_thread(epoll_reactor)
    assert run_in_thread(epoll_reactor, threadable.isInIOThread) is False
    assert threadable.ioThread == threading.get_ident()


def assert_closed(fds: list[int]) -> None:
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_release_reactor_closes_the_waker_and_the_poller() -> None:
    reactor = EPollReactor()
    waker = reactor.waker
    fds = [waker.i, waker.o, reactor._poller.fileno()]
    run_in_thread(reactor, lambda: None)
    _internals.release_reactor(reactor)
    assert reactor.waker is None
    assert waker not in reactor._internalReaders
    assert_closed(fds)


def test_release_reactor_without_internal_readers_still_closes_the_waker() -> None:
    reactor = EPollReactor()
    waker = reactor.waker
    fds = [waker.i, waker.o]
    del reactor._internalReaders
    _internals.release_reactor(reactor)
    assert reactor.waker is None
    assert_closed(fds)


def test_loop_of_reactor(asyncio_reactor: AsyncioSelectorReactor, loop: asyncio.AbstractEventLoop) -> None:
    assert _internals.loop_of_reactor(asyncio_reactor) is loop


def test_loop_of_reactor_without_the_attribute_is_the_running_loop(
        asyncio_reactor: AsyncioSelectorReactor, loop: asyncio.AbstractEventLoop) -> None:
    async def found() -> asyncio.AbstractEventLoop:
        return _internals.loop_of_reactor(asyncio_reactor)

    del asyncio_reactor._asyncioEventloop
    try:
        assert loop.run_until_complete(found()) is loop
        with pytest.raises(RuntimeError, match="no running event loop"):
            _internals.loop_of_reactor(asyncio_reactor)
    finally:
        asyncio_reactor._asyncioEventloop = loop


def answers_on_and_off_the_loop(loop: asyncio.AbstractEventLoop, answer: Callable[[], Any]) -> tuple[Any, Any]:
    """``answer()`` on ``loop``'s thread while it runs, and in another thread meanwhile."""

    async def both() -> tuple[Any, Any]:
        return answer(), await asyncio.to_thread(answer)

    return loop.run_until_complete(both())


def test_on_loop_thread(loop: asyncio.AbstractEventLoop) -> None:
    assert answers_on_and_off_the_loop(loop, lambda: _internals.on_loop_thread(loop)) == (True, False)
    assert _internals.on_loop_thread(loop) is False  # the loop is not running


def test_on_loop_thread_without_the_attribute_asks_the_running_loop(loop: asyncio.AbstractEventLoop) -> None:
    def answer() -> bool:
        thread_id = loop._thread_id  # type: ignore[attr-defined]
        del loop._thread_id  # type: ignore[attr-defined]
        try:
            return _internals.on_loop_thread(loop)
        finally:
            loop._thread_id = thread_id  # type: ignore[attr-defined]

    assert answers_on_and_off_the_loop(loop, answer) == (True, False)


@pytest.mark.parametrize("public_only", [False, True], ids=["private", "fallback"])
def test_running_loop(loop: asyncio.AbstractEventLoop, public_only: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if public_only:
        monkeypatch.delattr(asyncio, "_get_running_loop")
    assert answers_on_and_off_the_loop(loop, _internals.running_loop) == (loop, None)
    assert _internals.running_loop() is None


def test_run_first_step_now_runs_the_step_with_the_task_current(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[Any] = []

    async def handler() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)

    def start() -> None:
        task = asyncio.Task(handler(), loop=loop)
        seen.append(_internals.run_first_step_now(loop, task))
        seen.append(task)

    loop.call_soon(start)
    loop.run_until_complete(asyncio.sleep(0.01))
    current, ran, task = seen
    assert ran is True
    assert current is task


def test_run_first_step_now_leaves_the_step_scheduled_when_it_is_not_last(loop: asyncio.AbstractEventLoop) -> None:
    steps: list[str] = []

    async def handler() -> None:
        steps.append("handler")

    def start() -> None:
        task = asyncio.Task(handler(), loop=loop)
        loop.call_soon(steps.append, "later")
        steps.append(f"run now: {_internals.run_first_step_now(loop, task)}")

    loop.call_soon(start)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert steps == ["run now: False", "handler", "later"]


def test_run_first_step_now_inside_a_task_leaves_the_step_scheduled(loop: asyncio.AbstractEventLoop) -> None:
    async def handler() -> None:
        pass

    async def start() -> tuple[bool, bool]:
        task = asyncio.Task(handler(), loop=loop)
        ran = _internals.run_first_step_now(loop, task)
        done_at_once = task.done()
        await task
        return ran, done_at_once

    assert loop.run_until_complete(start()) == (False, False)


class Collect(protocol.Protocol):
    def __init__(self, expected: int, received: Deferred[bytes]) -> None:
        self.expected = expected
        self.received = received
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected:
            self.received.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_write_buffer_empty_on_a_tcp_connection() -> None:
    from twisted.internet import reactor

    received: Deferred[bytes] = Deferred()
    server = protocol.Factory.forProtocol(lambda: Collect(5, received))
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    connected = protocol.ClientCreator(reactor, protocol.Protocol).connectTCP("127.0.0.1", port.getHost().port)
    client = await connected
    try:
        transport = client.transport
        assert isinstance(transport, FileDescriptor)
        assert _internals.write_buffer_empty(transport) is True
        transport.write(b"hello")
        assert _internals.write_buffer_empty(transport) is False
        assert await received == b"hello"
        assert _internals.write_buffer_empty(transport) is True
    finally:
        client.transport.loseConnection()
        await port.stopListening()


def test_write_buffer_empty_without_the_list_is_false(file_descriptor: FileDescriptor) -> None:
    del file_descriptor._tempDataBuffer
    assert _internals.write_buffer_empty(file_descriptor) is False


@pytest_twisted.ensureDeferred
async def test_write_at_once_sends_straight_to_an_idle_socket_and_queues_behind_held_data() -> None:
    from twisted.internet import reactor

    received: Deferred[bytes] = Deferred()
    server = protocol.Factory.forProtocol(lambda: Collect(10, received))
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP("127.0.0.1", port.getHost().port)
    try:
        transport = client.transport
        _internals.write_at_once(transport, b"now;")
        assert _internals.write_buffer_empty(transport) is True  # in the socket already, not held
        transport.write(b"held;")
        _internals.write_at_once(transport, b"x")  # behind what the transport holds: order kept
        assert _internals.write_buffer_empty(transport) is False
        assert await received == b"now;held;x"
    finally:
        client.transport.loseConnection()
        await port.stopListening()


class TLSSocket(FileDescriptor):
    """A connected FileDescriptor after startTLS: its ``write`` encrypts, ``writeSomeData`` would not."""

    TLS = True
    connected = 1

    def writeSomeData(self, data: bytes) -> int:
        raise AssertionError(f"{data!r} would go out unencrypted")


def test_write_at_once_leaves_a_tls_transport_to_its_write() -> None:
    transport = TLSSocket(MemoryReactorClock())
    _internals.write_at_once(transport, b"secret")
    assert _internals.write_buffer_empty(transport) is False  # held for write's own turn


def test_write_at_once_on_another_transport_writes() -> None:
    transport = StringTransport()
    _internals.write_at_once(transport, b"frame")
    assert transport.value() == b"frame"


#: The private names pystrands._internals reads (``loop._ready`` -> ``_ready``).
PRIVATE_NAMES = frozenset(owner_and_name.split(".")[1] for _, owner_and_name in ATTRIBUTES)


def private_reads(source: str, filename: str) -> list[str]:
    """``filename:line: name`` for each read of a PRIVATE_NAMES name in ``source`` not on ``self``.

    An attribute of another object (``transport._tempDataBuffer``), a name
    in a string (``getattr(transport, "_tempDataBuffer", True)``) or an
    import (``from asyncio import _get_running_loop``). On ``self`` it is
    the library's own attribute of that name (``KeyedDispatcher._ready``).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute):
            names = [node.attr] if not (isinstance(node.value, ast.Name) and node.value.id == "self") else []
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name in PRIVATE_NAMES]
    return [f"{filename}:{line}: {name}" for line, name in sorted(found)]


def test_private_reads_finds_each_kind_of_read() -> None:
    source = ("from asyncio import _get_running_loop\n"
              "empty = not getattr(transport, '_tempDataBuffer', True)\n"
              "step = loop._ready[-1]\n"
              "self._ready = []\n")
    assert private_reads(source, "example.py") == [
        "example.py:1: _get_running_loop", "example.py:2: _tempDataBuffer", "example.py:3: _ready"]


def test_no_other_module_reads_these_attributes() -> None:
    package = Path(_internals.__file__).parent
    reads = [read for path in sorted(package.rglob("*.py")) if path.name != "_internals.py"
             for read in private_reads(path.read_text(), str(path.relative_to(package.parent)))]
    assert not reads, "read these through pystrands._internals instead:\n" + "\n".join(reads)

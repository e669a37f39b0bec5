"""The session both faces share, driven deterministically: a Clock reactor and in-memory transports.

Every public call in every state (the ``SESSION_TRANSITIONS`` and ``CALLS``
tables of :mod:`pystrands._session`), then the paths a table does not show:
a failed single attempt, retries, the disconnect deadline, a closed loop.
The same walk runs the asyncio face's own runtime on a loop, connected
through in-memory transports. The real sockets, threads and loops are in
test_blocking.py and test_async.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from pystrands import AsyncPyStrandsClient, NotConnectedError, PyStrandsClient, SendBufferFull
from pystrands._adapter import run_as_handler
from pystrands._dropped import DroppedSends
from pystrands._session import (
    CALLS,
    SESSION_TRANSITIONS,
    Cycle,
    InvalidSessionTransition,
    Session,
    SessionEvent,
    SessionState,
)
from pystrands.async_client import _LoopRuntime
from pystrands.client import _ThreadRuntime
from pystrands.context import Context
from pystrands.lifecycle import InvalidTransition

IDLE, CONNECTING, SERVING, DRAINING, CLOSED = SessionState
#: Seconds a step on a loop may take before the test fails (none should take more than a few loop turns).
WAIT = 5.0
HELLO = b'{"request_id": "h", "action": "hello", "params": {"protocol": 1, "features": ["room_members"]}}\n'
MESSAGE = (b'{"request_id": "m", "action": "new_message", "params": {"message": "hi", "context":'
           b' {"client_id": "a", "room_id": "r", "metadata": {}}}}\n')


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects a factory to an in-memory transport, refuses, or holds the attempt, as the world says."""

    def __init__(self, world: MemoryWorld) -> None:
        self.world = world

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        mode = self.world.mode
        if mode == "refuse":
            return fail(ConnectionRefusedError())
        if mode == "hold":
            held: Deferred[Any] = Deferred()
            self.world.held.append(held)
            return held
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.world.transports.append(transport)
        return succeed(protocol)


class ThreadReactor(MemoryReactorClock):
    """A MemoryReactorClock with a thread's call queue: run at once, or held until :meth:`run_held`."""

    def __init__(self, world: MemoryWorld) -> None:
        super().__init__()
        self.world = world
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        if self.world.hold_thread_calls:
            self.held.append((function, args))
        else:
            function(*args)

    def run_held(self) -> None:
        """Run what other threads handed over, in order, as the reactor thread would."""
        held, self.held = self.held, []
        for function, args in held:
            function(*args)


class MemoryWorld(_ThreadRuntime):
    """The blocking face's world in memory: a MemoryReactorClock per cycle, nothing to release."""

    def __init__(self, face: Any) -> None:
        super().__init__(face)
        self.mode = "accept"
        #: True: the reactor thread is busy, calls handed to it wait for ``run_held()``.
        self.hold_thread_calls = False
        self.reactors: list[ThreadReactor] = []
        self.transports: list[StringTransportWithDisconnection] = []
        self.held: list[Deferred[Any]] = []
        self.released: list[Cycle] = []
        #: Reactors whose loop is closed.
        self.closed: set[Any] = set()

    def open(self) -> ThreadReactor:
        self.reactors.append(ThreadReactor(self))
        return self.reactors[-1]

    def endpoint(self, reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        return MemoryEndpoint(self)

    def release(self, cycle: Cycle) -> None:
        self.released.append(cycle)

    def alive(self, reactor: Any) -> bool:
        return reactor not in self.closed


class Holding(PyStrandsClient):
    """Its on_message returns a Deferred the test fires: a handler in flight as long as it likes."""

    def _init_state(self) -> None:
        super()._init_state()
        self.gate: Deferred[None] = Deferred()

    def on_message(self, message: str, context: Context) -> Deferred[None]:
        return self.gate


class Rig:
    """A face whose session runs in a memory world, and the moves the session made."""

    def __init__(self, **options: Any) -> None:
        self.face = Holding(port=1, **options)
        self.world = MemoryWorld(self.face)
        self.moves: list[tuple[SessionState, SessionEvent, SessionState]] = []
        self.session = self.face._session = Session(self.world, self.world.endpoint, self.watch)

    def watch(self, old: SessionState, event: SessionEvent, new: SessionState) -> None:
        self.moves.append((old, event, new))

    def connect(self) -> concurrent.futures.Future[bool]:
        return self.session.connect(*self.face._connect_args())

    def disconnect(self, timeout: float = 1.0) -> concurrent.futures.Future[None]:
        closed, _ = self.session.disconnect(timeout)
        return closed

    @property
    def clock(self) -> Clock:
        return self.world.reactors[-1]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def into(rig: Rig, state: SessionState) -> None:
    """Bring ``rig``'s session into ``state`` by public calls."""
    if state is CONNECTING:
        rig.world.mode = "hold"
        rig.connect()
    elif state in (SERVING, DRAINING, CLOSED):
        assert rig.connect().result(0) is True
        rig.world.transports[-1].protocol.dataReceived(HELLO)
        if state is DRAINING:
            rig.world.transports[-1].protocol.dataReceived(MESSAGE)  # its handler waits for the gate
            rig.disconnect(10.0)
        elif state is CLOSED:
            rig.disconnect(0.0)
    assert rig.session.state is state


def test_every_public_call_in_every_state_is_in_the_tables() -> None:
    for state in SessionState:
        assert any(key[0] is state for key in SESSION_TRANSITIONS), state
        for call in ("send", "request", "run_forever"):
            assert (state, call) in CALLS
    for target, what in SESSION_TRANSITIONS.values():
        assert isinstance(target, SessionState) and what


def test_a_move_the_table_does_not_list_is_an_invalid_transition(rig: Rig) -> None:
    with pytest.raises(InvalidSessionTransition, match="'the first attempt connected' cannot happen while"
                                                      " the session is idle") as raised:
        rig.session._fire(SessionEvent.CONNECTED)
    assert isinstance(raised.value, InvalidTransition), "caught as the connection machine's error is"
    assert rig.session.state is IDLE and rig.moves == []


# (state, call) -> (the state after, what the call's result must show)
WALK: dict[tuple[SessionState, str], tuple[SessionState, Callable[[Rig, Any], bool]]] = {
    (IDLE, "connect"): (CONNECTING, lambda rig, got: not got.done()),
    (IDLE, "disconnect"): (IDLE, lambda rig, got: got.result(0) is None),
    (CONNECTING, "connect"): (CONNECTING, lambda rig, got: got is rig.session.cycle.attempt and not got.done()),
    (CONNECTING, "disconnect"): (CLOSED, lambda rig, got: got.result(0) is None
                                 and rig.session.cycle.attempt.result(0) is False),
    (SERVING, "connect"): (SERVING, lambda rig, got: got.result(0) is True),
    (SERVING, "disconnect"): (CLOSED, lambda rig, got: got.result(0) is None
                              and not rig.world.transports[-1].connected),
    (DRAINING, "connect"): (CONNECTING, lambda rig, got: not got.done() and len(rig.world.reactors) == 2),
    (DRAINING, "disconnect"): (DRAINING, lambda rig, got: got is rig.session.cycle.closed and not got.done()),
    (CLOSED, "connect"): (CONNECTING, lambda rig, got: not got.done() and len(rig.world.reactors) == 2),
    (CLOSED, "disconnect"): (CLOSED, lambda rig, got: got.result(0) is None),
}


@pytest.mark.parametrize(("state", "call"), list(WALK), ids=[f"{s.value}-{c}" for s, c in WALK])
def test_each_life_cycle_call_in_each_state(rig: Rig, state: SessionState, call: str) -> None:
    into(rig, state)
    if call == "connect":
        rig.world.mode = "hold"
        got = rig.connect()
    else:
        got = rig.disconnect()
    after, shows = WALK[(state, call)]
    assert rig.session.state is after
    assert shows(rig, got)
    assert rig.moves, "the call moved the session (or stayed, through a listed move)"
    for old, event, new in rig.moves:  # every move the session made is one the table lists
        assert SESSION_TRANSITIONS[(old, event)][0] is new


SENDS: dict[SessionState, Callable[[Rig, concurrent.futures.Future[Any]], bool]] = {
    IDLE: lambda rig, sent: sent.result(0) is False,
    CONNECTING: lambda rig, sent: not sent.done(),  # buffered for the connection
    SERVING: lambda rig, sent: sent.result(0) is True and b'"hello"' in rig.world.transports[-1].value(),
    DRAINING: lambda rig, sent: sent.result(0) is True,  # the handler still finishing may reply
    CLOSED: lambda rig, sent: sent.result(0) is False,
}


@pytest.mark.parametrize("state", list(SENDS), ids=[s.value for s in SENDS])
def test_send_and_request_in_each_state(rig: Rig, state: SessionState) -> None:
    into(rig, state)
    sent = rig.face.broadcast_message("hello")
    assert SENDS[state](rig, sent)
    asked = rig.face.room_members("r")
    if state is SERVING:
        assert not asked.done() and b"room_members" in rig.world.transports[-1].value()
    else:
        with pytest.raises(NotConnectedError):
            asked.result(0)
    assert rig.session.state is state


@pytest.mark.parametrize("state", list(SessionState), ids=[s.value for s in SessionState])
def test_run_forever_connects_only_where_no_connection_is_coming(rig: Rig, state: SessionState) -> None:
    into(rig, state)
    connects = not (rig.session.connected or rig.session.retrying)
    assert connects == CALLS[(state, "run_forever")].startswith("connect()")


def test_a_send_buffered_while_connecting_is_true_once_written(rig: Rig) -> None:
    into(rig, CONNECTING)
    sent = rig.face.send_room_message("r", "early")
    protocol = rig.session.cycle.factory.buildProtocol(None)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    rig.world.held[-1].callback(protocol)
    assert sent.result(0) is True and b"early" in transport.value()
    assert rig.session.state is SERVING


def test_a_failed_single_attempt_closes_the_cycle_and_sends_are_dropped() -> None:
    rig = Rig(auto_reconnect=False)
    rig.world.mode = "refuse"
    assert rig.connect().result(0) is False
    assert rig.session.state is CLOSED and rig.world.released == [rig.session.cycle]
    assert rig.face.broadcast_message("into the void").result(0) is False
    assert rig.session.retrying is False


def test_a_failed_attempt_with_retries_serves_while_retrying(rig: Rig) -> None:
    rig.world.mode = "refuse"
    assert rig.connect().result(0) is False
    assert rig.session.state is SERVING and rig.session.retrying and not rig.session.connected
    buffered = rig.face.broadcast_message("later")
    rig.world.mode = "accept"
    rig.clock.advance(rig.face.reconnect_delay * 2)
    assert rig.session.connected and buffered.result(0) is True


def test_past_the_reconnect_buffer_a_send_fails_with_send_buffer_full() -> None:
    rig = Rig(send_buffer_size=1)
    rig.world.mode = "refuse"
    rig.connect()
    waiting = rig.face.broadcast_message("waits")
    with pytest.raises(SendBufferFull):
        rig.face.broadcast_message("one too many").result(0)
    assert not waiting.done()


def test_draining_lasts_until_the_handlers_finish(rig: Rig) -> None:
    into(rig, DRAINING)
    closed = rig.session.cycle.closed
    rig.clock.advance(5)
    assert rig.session.state is DRAINING and not closed.done()
    rig.face.gate.callback(None)
    assert rig.session.state is CLOSED and closed.result(0) is None


def test_draining_ends_at_the_deadline_under_a_hung_handler(rig: Rig) -> None:
    into(rig, DRAINING)
    rig.clock.advance(10)
    assert rig.session.state is CLOSED and rig.session.cycle.closed.result(0) is None
    assert rig.world.released == [rig.session.cycle]


def test_disconnect_completes_what_run_forever_waits_for_and_connect_renews_it(rig: Rig) -> None:
    into(rig, SERVING)
    waited = rig.session.disconnected
    assert not waited.done()
    rig.disconnect()
    assert waited.done()
    rig.connect()
    assert not rig.session.disconnected.done()


def test_a_closed_loop_ends_the_cycle_and_connect_starts_anew(rig: Rig) -> None:
    into(rig, SERVING)
    old = rig.session.cycle
    rig.world.closed.add(rig.clock)  # the loop the cycle ran on is closed
    assert rig.session.connected is False and rig.session.retrying is False
    rig.world.mode = "hold"
    assert not rig.connect().done()
    assert rig.session.state is CONNECTING and rig.session.cycle is not old
    assert (SERVING, SessionEvent.WORLD_ENDED, CLOSED) in rig.moves, "the closed loop ended the old cycle first"
    assert old.backend.send(b"{}").result(0) is False, "its sends are dropped, none waits for the loop"


def test_dropped_sends_warn_at_once_then_once_a_second_with_the_count() -> None:
    clock = Clock()
    lines: list[LogEvent] = []
    observer: ILogObserver = lines.append
    globalLogPublisher.addObserver(observer)
    try:
        dropped = DroppedSends(clock)
        assert dropped.dropped("not connected") is False
        clock.advance(0.5)
        dropped.dropped("not connected")
        dropped.dropped("not connected")
        clock.advance(0.5)
        dropped.dropped("not connected")
    finally:
        globalLogPublisher.removeObserver(observer)
    warned = [line for line in lines if line.get("log_namespace") == "pystrands._dropped"]
    assert len(warned) == 2
    assert warned[0]["held_back"] == 0 and warned[1]["held_back"] == 2
    assert dropped.held_back == 0


def test_a_send_before_connect_reaches_the_reactor_waits_for_the_connection(rig: Rig) -> None:
    rig.world.hold_thread_calls = True  # the reactor thread has not run the cycle's start yet
    attempt = rig.connect()
    assert rig.session.state is CONNECTING
    sent = rig.face.broadcast_message("early")
    assert not sent.done(), "buffered, as CALLS says of a send while connecting"
    rig.clock.run_held()
    assert attempt.result(0) is True
    assert sent.result(0) is True and b'"early"' in rig.world.transports[-1].value()


def test_disconnect_gives_the_cycle_it_closed_though_a_connect_follows_at_once(rig: Rig) -> None:
    into(rig, DRAINING)
    old = rig.session.cycle
    closed, cycle = rig.session.disconnect(10.0)
    rig.world.mode = "hold"
    rig.connect()  # another thread's connect(), before the disconnecting one looked at the session
    assert cycle is old and rig.session.cycle is not old
    assert closed is old.closed and not closed.done() and cycle.deadline > 0


def test_run_forever_returns_when_its_single_attempt_failed() -> None:
    rig = Rig(auto_reconnect=False)
    rig.world.mode = "refuse"
    runner = threading.Thread(target=rig.face.run_forever, daemon=True)
    runner.start()
    runner.join(5.0)
    assert not runner.is_alive(), "no connection is coming: nothing to wait for"
    assert rig.session.state is CLOSED and rig.world.released == [rig.session.cycle]
    assert "return at once" in CALLS[(IDLE, "run_forever")]


@pytest.mark.parametrize("auto_reconnect", [False, True], ids=["single", "retrying"])
def test_a_connection_lost_without_a_retry_to_follow_closes_the_session(auto_reconnect: bool) -> None:
    rig = Rig(auto_reconnect=auto_reconnect)
    into(rig, SERVING)
    waited = rig.session.disconnected
    rig.world.mode = "refuse"
    rig.world.transports[-1].loseConnection()
    if auto_reconnect:  # a retry follows, and another after it fails: still serving, run_forever() waits
        rig.clock.advance(rig.face.reconnect_delay * 2)
        assert rig.session.state is SERVING and rig.session.retrying and not waited.done()
        return
    assert rig.session.state is CLOSED and rig.world.released == [rig.session.cycle]
    assert waited.result(0) is None, "what run_forever() waits for is done: no connection is coming"
    assert (SERVING, SessionEvent.GAVE_UP, DRAINING) in rig.moves
    assert rig.face.broadcast_message("into the void").result(0) is False


def test_a_late_send_of_an_old_cycles_handler_is_dropped_not_sent_on_the_next_connection(rig: Rig) -> None:
    into(rig, SERVING)
    old = rig.session.cycle
    rig.disconnect(0.0)
    rig.connect()
    rig.world.transports[-1].protocol.dataReceived(HELLO)
    assert rig.session.cycle is not old and rig.session.connected
    # The old cycle's worker thread, woken late, sends:
    late = run_as_handler(old.backend, rig.face.broadcast_message, "late")
    assert late.result(0) is False
    assert b'"late"' not in rig.world.transports[-1].value()


# -- the same walk on the asyncio face's own runtime: a reactor on a running loop, in-memory transports --


class AsyncHolding(AsyncPyStrandsClient):
    """Its on_message waits for a future the test completes: a handler task in flight as long as it likes."""

    def _init_state(self) -> None:
        super()._init_state()
        self.gate: asyncio.Future[None] | None = None

    async def on_message(self, message: str, context: Context) -> None:
        self.gate = asyncio.get_running_loop().create_future()
        await self.gate


class AsyncRig:
    """An asyncio face whose session runs its real runtime (_LoopRuntime) over in-memory connections."""

    def __init__(self, **options: Any) -> None:
        self.face = AsyncHolding(port=1, **options)
        self.world = MemoryWorld(self.face)
        self.moves: list[tuple[SessionState, SessionEvent, SessionState]] = []
        self.session = self.face._session = Session(_LoopRuntime(self.face), self.world.endpoint, self.watch)

    def watch(self, old: SessionState, event: SessionEvent, new: SessionState) -> None:
        self.moves.append((old, event, new))

    def connect(self) -> asyncio.Future[bool]:
        return self.session.connect(*self.face._connect_args())

    def disconnect(self, timeout: float = 1.0) -> asyncio.Future[None]:
        closed, _ = self.session.disconnect(timeout)
        return closed

    async def into(self, state: SessionState) -> None:
        """Bring the session into ``state`` by public calls."""
        if state is CONNECTING:
            self.world.mode = "hold"
            self.connect()
        elif state in (SERVING, DRAINING, CLOSED):
            assert await self.connect() is True
            self.world.transports[-1].protocol.dataReceived(HELLO)
            if state is DRAINING:
                self.world.transports[-1].protocol.dataReceived(MESSAGE)  # its task waits for the gate
                await asyncio.sleep(0)  # read outside a loop callback, the task starts on the next turn
                assert self.face.gate is not None
                self.disconnect(10.0)
            elif state is CLOSED:
                await asyncio.wait_for(self.disconnect(0.0), WAIT)
        assert self.session.state is state

    async def finish(self) -> None:
        """Let the handler in flight end, and close: nothing of the rig is left on the loop."""
        gate = self.face.gate
        if gate is not None and not gate.done():
            gate.set_result(None)
        await asyncio.wait_for(self.face.disconnect(0.0), WAIT)


def on_a_loop(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 2 * WAIT))


@pytest.mark.parametrize(("state", "call"), list(WALK), ids=[f"{s.value}-{c}" for s, c in WALK])
def test_each_life_cycle_call_in_each_state_on_a_loop(state: SessionState, call: str) -> None:
    async def body() -> None:
        rig = AsyncRig()
        await rig.into(state)
        before = len(rig.moves)
        if call == "connect":
            rig.world.mode = "hold"
            got: asyncio.Future[Any] = rig.connect()
        else:
            got = rig.disconnect()
        after, _ = WALK[(state, call)]
        if after is CLOSED or (state, call) == (SERVING, "connect"):
            await asyncio.wait_for(got, WAIT)  # the loop runs the close (or gives the True at once)
        else:
            await asyncio.sleep(0)
            assert not got.done() or (state, call) == (IDLE, "disconnect")
        assert rig.session.state is after
        assert len(rig.moves) > before
        for old, event, new in rig.moves:
            assert SESSION_TRANSITIONS[(old, event)][0] is new
        await rig.finish()

    on_a_loop(body)


@pytest.mark.parametrize("state", list(SENDS), ids=[s.value for s in SENDS])
def test_send_in_each_state_on_a_loop(state: SessionState) -> None:
    async def body() -> None:
        rig = AsyncRig()
        await rig.into(state)
        sent = rig.face.broadcast_message("hello")
        if state is CONNECTING:
            await asyncio.sleep(0)
            assert not sent.done(), CALLS[(state, "send")]
        else:
            assert await sent is (state in (SERVING, DRAINING)), CALLS[(state, "send")]
        with pytest.raises(NotConnectedError) if state is not SERVING else contextlib.nullcontext():
            asked = rig.face.room_members("r")
            if state is not SERVING:
                await asked
        assert rig.session.state is state
        await rig.finish()

    on_a_loop(body)


def test_run_forever_on_a_loop_returns_when_its_single_attempt_failed() -> None:
    async def body() -> None:
        rig = AsyncRig(auto_reconnect=False)
        rig.world.mode = "refuse"
        await asyncio.wait_for(rig.face.run_forever(), WAIT)
        assert rig.session.state is CLOSED

    on_a_loop(body)

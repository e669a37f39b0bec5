"""BrokerClientFactory's life cycle, driven by hand: every public call in every state, retries on a Clock, logs.

Deterministic: a Clock, a FakeEndpoint whose attempts the test resolves,
in-memory transports (tests/support/driver.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from pystrands import Backend, NotConnectedError, wire
from pystrands.broker.extensions import HELLO_FRAME
from pystrands.lifecycle import TRANSITIONS, ConnectionMachine, ConnectionState, Event, InvalidTransition
from pystrands.protocol import CLOSE_TIMEOUT, BrokerClientFactory
from tests.support.driver import Driver, FakeEndpoint, MemoryTransport, frame_from_transcript, outcome

S = ConnectionState
NO_JITTER = {"reconnect_delay": 1.0, "max_reconnect_delay": 8.0, "reconnect_backoff": 2.0}
#: A broker's frame: the first one of a connection proves it (the backoff starts over).
HEARTBEAT = {"request_id": "heartbeat", "action": "heartbeat", "params": {}}


def driver(**settings: Any) -> Driver:
    made = Driver(**{"idle_timeout": 0, **NO_JITTER, **settings})
    made.factory.jitter = 0  # ReconnectingClientFactory's attribute, read by connect(): exact delays
    return made


def in_state(state: ConnectionState) -> Driver:
    """A driver whose factory is in ``state`` (STOPPING: stopped while connected, the close not yet done)."""
    made = driver()
    if state is S.NEVER_STARTED:
        return made
    made.connect()
    if state is S.WAITING_TO_RETRY:
        made.fail()
    elif state in (S.CONNECTED, S.STOPPING, S.STOPPED):
        made.succeed()
        if state is not S.CONNECTED:
            made.factory.stop(1.0)
            if state is S.STOPPED:
                made.clock.advance(0)
    assert made.factory.state is state
    return made


def describe(result: Any) -> str:
    """A call's observable outcome, in the words of the table below."""
    if not isinstance(result, Deferred):
        return "returns"
    results: list[Any] = []
    result.addCallbacks(lambda value: (results.append(value), value)[1], results.append)  # values pass on
    if not results:
        return "pending"
    if isinstance(results[0], Failure):
        return f"fails {results[0].type.__name__}: {results[0].getErrorMessage()}"
    return f"fires {results[0]!r}"


CALLS: dict[str, Callable[[Driver], Any]] = {
    "connect": lambda d: d.factory.connect(d.endpoint),
    "stop": lambda d: d.factory.stop(1.0),
    "next_attempt": lambda d: d.factory.next_attempt(),
    "send": lambda d: d.factory.broadcast_message("hi"),
    "request": lambda d: d.factory.room_members("lobby"),
}

RUNTIME = "raises RuntimeError"
NOT_CONNECTED = "fails NotConnectedError: not connected to the broker: "

#: state -> call -> (outcome once the clock has turned, state after it).
TABLE: dict[ConnectionState, dict[str, tuple[str, ConnectionState]]] = {
    S.NEVER_STARTED: {
        "connect": ("returns", S.CONNECTING),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("pending", S.NEVER_STARTED),
        "send": (NOT_CONNECTED + "the backend was never started", S.NEVER_STARTED),
        "request": (NOT_CONNECTED + "the backend was never started", S.NEVER_STARTED),
    },
    S.CONNECTING: {
        "connect": (RUNTIME, S.CONNECTING),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("pending", S.CONNECTING),
        "send": ("pending", S.CONNECTING),  # buffered for the connection
        "request": (NOT_CONNECTED + "connecting (requests are not buffered)", S.CONNECTING),
    },
    S.CONNECTED: {
        "connect": (RUNTIME, S.CONNECTED),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("pending", S.CONNECTED),
        "send": ("fires None", S.CONNECTED),
        "request": ("pending", S.CONNECTED),  # waits for the broker's hello
    },
    S.WAITING_TO_RETRY: {
        "connect": (RUNTIME, S.WAITING_TO_RETRY),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("pending", S.WAITING_TO_RETRY),
        "send": ("pending", S.WAITING_TO_RETRY),
        "request": (NOT_CONNECTED + "waiting to retry (requests are not buffered)", S.WAITING_TO_RETRY),
    },
    S.STOPPING: {
        "connect": (RUNTIME, S.STOPPED),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("fires False", S.STOPPED),
        "send": ("fires None", S.STOPPED),  # handlers still finishing send on the closing connection
        "request": (NOT_CONNECTED + "the backend was stopped", S.STOPPED),
    },
    S.STOPPED: {
        "connect": (RUNTIME, S.STOPPED),
        "stop": ("fires None", S.STOPPED),
        "next_attempt": ("fires False", S.STOPPED),
        "send": (NOT_CONNECTED + "the backend was stopped", S.STOPPED),
        "request": (NOT_CONNECTED + "the backend was stopped", S.STOPPED),
    },
}


def test_the_table_covers_every_state_and_call() -> None:
    assert set(TABLE) == set(ConnectionState)
    assert all(set(calls) == set(CALLS) for calls in TABLE.values())


@pytest.mark.parametrize("state", list(ConnectionState), ids=lambda state: state.name)
@pytest.mark.parametrize("call", list(CALLS))
def test_every_public_call_in_every_state(state: ConnectionState, call: str) -> None:
    made = in_state(state)
    try:
        result = CALLS[call](made)
    except RuntimeError:
        result = RUNTIME
    made.clock.advance(0)  # a close asked for completes
    observed = result if result == RUNTIME else describe(result)
    assert (observed, made.factory.state) == TABLE[state][call]


#: state -> (connected, retrying, no_connection_reason)
PROPERTIES: dict[ConnectionState, tuple[bool, bool, str | None]] = {
    S.NEVER_STARTED: (False, False, "the backend was never started"),
    S.CONNECTING: (False, True, None),
    S.CONNECTED: (True, True, None),
    S.WAITING_TO_RETRY: (False, True, None),
    S.STOPPING: (True, False, None),  # open until the close completes; nothing comes after it
    S.STOPPED: (False, False, "the backend was stopped"),
}


@pytest.mark.parametrize("state", list(ConnectionState), ids=lambda state: state.name)
def test_properties_in_every_state(state: ConnectionState) -> None:
    factory = in_state(state).factory
    assert (factory.connected, factory.retrying, factory.no_connection_reason) == PROPERTIES[state]
    assert str(factory.state) == state.value and state.value in repr(factory)


def test_the_transition_table_defines_stop_everywhere_and_connect_once() -> None:
    assert {state for state, event in TRANSITIONS if event is Event.STOP} == set(ConnectionState)
    assert [state for state, event in TRANSITIONS if event is Event.CONNECT] == [S.NEVER_STARTED]
    machine = ConnectionMachine()
    with pytest.raises(InvalidTransition, match="'an attempt connected' cannot happen while never started"):
        machine.handle(Event.ATTEMPT_SUCCEEDED)
    assert machine.state is S.NEVER_STARTED


# -- stop ----------------------------------------------------------------------------------------


class Gate(Backend):
    """on_message returns a Deferred the test fires."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[Deferred[None]] = []

    def on_message(self, message: str, context: Any) -> Deferred[None]:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        return gate


def test_every_stop_callers_deferred_fires_once_stopped() -> None:
    """A second stop() while connected used to leave the first caller's Deferred waiting for ever."""
    made = in_state(S.CONNECTED)
    first, second = made.factory.stop(), made.factory.stop()
    assert describe(first) == describe(second) == "pending"
    assert made.factory.state is S.STOPPING
    made.clock.advance(0)
    assert describe(first) == describe(second) == "fires None"
    assert describe(made.factory.stop()) == "fires None"


def test_stop_waits_for_running_handlers_up_to_the_first_timeout() -> None:
    backend = Gate()
    made = driver(backend=backend).connect().succeed()
    made.feed(frame_from_transcript("new_message"), frame_from_transcript("new_message", message="two"))
    first = made.factory.stop(5.0)
    later = made.factory.stop(0.0)  # the stop under way keeps its timeout
    made.clock.advance(4.9)
    assert describe(first) == describe(later) == "pending" and made.factory.state is S.STOPPING
    backend.gates[0].callback(None)  # one client's two messages: the second has not started
    made.clock.advance(0.1)  # the timeout: closing anyway
    assert made.transport.disconnecting
    made.clock.advance(0)
    assert describe(first) == describe(later) == "fires None" and made.factory.state is S.STOPPED


def test_stop_after_the_handlers_finish_closes_at_once() -> None:
    backend = Gate()
    made = driver(backend=backend).connect().succeed()
    made.feed(frame_from_transcript("new_message"))
    stopped = made.factory.stop(5.0)
    made.clock.advance(1.0)
    backend.gates[0].callback(None)
    assert made.transport.disconnecting and made.clock.seconds() == 1.0
    made.clock.advance(0)
    assert describe(stopped) == "fires None"


def test_stop_during_connecting_cancels_the_attempt() -> None:
    made = driver().connect()
    attempt = made.factory.next_attempt()
    stopped = made.factory.stop()
    assert made.endpoint.attempts[0].cancelled
    assert describe(stopped) == "fires None" and describe(attempt) == "fires False"
    assert made.factory.state is S.STOPPED and made.clock.getDelayedCalls() == []


def test_an_attempt_that_connects_after_the_stop_is_closed() -> None:
    made = driver().connect()
    made.endpoint.attempts[0].deferred = Deferred()  # an endpoint that ignores the cancel
    made.factory.stop()
    assert made.factory.state is S.STOPPED
    made.succeed()
    made.clock.advance(0)
    assert made.transport.closed and not made.factory.connected and made.factory.state is S.STOPPED


def test_stop_fails_buffered_sends_and_drops_the_retry() -> None:
    made = in_state(S.WAITING_TO_RETRY)
    buffered = made.factory.broadcast_message("kept")
    made.factory.stop()
    assert describe(buffered) == NOT_CONNECTED + "the backend was stopped"
    assert made.clock.getDelayedCalls() == [] and len(made.endpoint.attempts) == 1


def test_a_cancelled_stop_or_attempt_waiter_does_not_break_the_others() -> None:
    made = in_state(S.CONNECTED)
    gave_up, kept = made.factory.stop(), made.factory.stop()
    gave_up.cancel()
    gave_up.addErrback(lambda _: None)
    made.clock.advance(0)
    assert describe(kept) == "fires None"
    made = in_state(S.CONNECTING)
    dropped, waited = made.factory.next_attempt(), made.factory.next_attempt()
    dropped.cancel()
    dropped.addErrback(lambda _: None)
    made.succeed()
    assert describe(waited) == "fires True"


class StuckClose(MemoryTransport):
    """A transport whose graceful close never completes, as TLS's while the broker's close_notify goes unread."""

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.clock.callLater(0, self.drop, Failure(ConnectionLost("aborted")))


def with_stuck_close(made: Driver) -> Driver:
    """``made``'s attempt under way connects over a StuckClose."""
    transport = StuckClose(made.clock, None)
    made.succeed(transport)
    transport.protocol = made.protocol
    return made


def test_a_close_that_does_not_complete_is_aborted_after_close_timeout(logged: list[dict[str, Any]]) -> None:
    """twistd over TLS never exited: the stop's close waited for ever (review F19)."""
    backend = Gate()
    made = with_stuck_close(driver(backend=backend).connect())
    made.feed(frame_from_transcript("new_message"))
    stopped = made.factory.stop(2.0)
    made.clock.advance(2.0)  # the handler is still running: closing anyway
    assert made.transport.disconnecting and describe(stopped) == "pending"
    made.clock.advance(CLOSE_TIMEOUT - 0.01)
    assert describe(stopped) == "pending" and not made.transport.closed
    made.clock.advance(0.01)  # the close had its time: aborted
    made.clock.advance(0)
    assert made.transport.closed and describe(stopped) == "fires None" and made.factory.state is S.STOPPED
    assert lines(logged, LogLevel.warn, f"did not complete its close within {CLOSE_TIMEOUT:g}s; aborted it")


def test_the_close_reads_again_and_hands_nothing_on() -> None:
    """Reading paused for the stop resumes for the close (TLS reads the broker's close_notify); frames are dropped."""
    backend = Gate()
    made = driver(backend=backend).connect().succeed()
    made.feed(frame_from_transcript("new_message"))
    made.factory.stop(1.0)
    assert made.transport.producerState == "paused"
    backend.gates[0].callback(None)  # the handler is done: the close begins
    assert made.transport.producerState == "producing" and made.transport.disconnecting
    made.feed(frame_from_transcript("new_message"))
    assert len(backend.gates) == 1


def test_a_close_that_completes_leaves_no_timer() -> None:
    made = driver().connect().succeed()
    stopped = made.factory.stop(1.0)
    made.clock.advance(0)
    assert describe(stopped) == "fires None" and made.clock.getDelayedCalls() == []


def test_a_connection_made_after_the_stop_is_aborted_if_its_close_does_not_complete() -> None:
    made = driver().connect()
    made.endpoint.attempts[0].deferred = Deferred()  # an endpoint that ignores the cancel
    made.factory.stop()
    with_stuck_close(made)
    assert made.transport.disconnecting and not made.transport.closed
    made.clock.advance(CLOSE_TIMEOUT)
    made.clock.advance(0)
    assert made.transport.closed and made.clock.getDelayedCalls() == []


# -- retries ---------------------------------------------------------------------------------------


def attempt_times(made: Driver, failures: int) -> list[float]:
    """Fail ``failures`` attempts in a row, each as soon as it starts; the clock time of each attempt."""
    times = []
    for _ in range(failures):
        times.append(made.clock.seconds())
        made.fail()
        made.clock.advance(made.clock.getDelayedCalls()[0].getTime() - made.clock.seconds())
    return times


def test_retries_back_off_up_to_the_cap_and_a_proved_connection_resets_them() -> None:
    made = driver().connect()
    assert attempt_times(made, 6) == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]  # waits 1, 2, 4, 8, 8
    made.succeed()
    made.feed(HEARTBEAT)  # the connection proves itself (test_the_first_frame_proves_a_connection_...)
    made.lose()
    assert made.factory.state is S.WAITING_TO_RETRY
    assert made.clock.getDelayedCalls()[0].getTime() - made.clock.seconds() == 1.0  # from the start again


def test_next_attempt_reports_each_outcome() -> None:
    made = driver().connect()
    failed = made.factory.next_attempt()
    made.fail()
    connected = made.factory.next_attempt()
    assert describe(failed) == "fires False" and describe(connected) == "pending"
    made.clock.advance(1.0)
    made.succeed()
    assert describe(connected) == "fires True"


def test_without_auto_reconnect_one_attempt_then_stopped() -> None:
    made = driver(auto_reconnect=False).connect()
    attempt = made.factory.next_attempt()
    made.fail()
    assert describe(attempt) == "fires False" and made.factory.state is S.STOPPED
    assert made.factory.no_connection_reason == "connecting failed and auto_reconnect is off"
    assert made.clock.getDelayedCalls() == [] and not made.factory.retrying
    gave_up = NOT_CONNECTED + "connecting failed and auto_reconnect is off"
    assert describe(made.factory.broadcast_message("x")) == gave_up
    assert describe(made.factory.next_attempt()) == "fires False"
    assert describe(made.factory.stop()) == "fires None"
    assert made.factory.no_connection_reason == "the backend was stopped"


def test_without_auto_reconnect_a_lost_connection_is_the_end() -> None:
    made = driver(auto_reconnect=False).connect().succeed()
    assert not made.factory.retrying and made.factory.connected
    made.lose()
    assert made.factory.state is S.STOPPED and made.clock.getDelayedCalls() == []
    assert made.factory.no_connection_reason == "the connection is lost and auto_reconnect is off"


def test_sends_while_reconnecting_are_buffered_then_bounded() -> None:
    made = driver(send_buffer_size=3).connect().succeed()
    made.lose()
    sent = [made.factory.send_room_message("lobby", f"buffered-{n}") for n in range(3)]
    assert describe(made.factory.broadcast_message("one too many")).startswith(
        "fails SendBufferFull: not connected to the broker, and 3 sends already wait")
    assert [describe(d) for d in sent] == ["pending"] * 3
    made.clock.advance(1.0)
    made.succeed()
    assert [describe(d) for d in sent] == ["fires None"] * 3
    assert [frame["params"]["message"] for frame in made.sent()] == ["buffered-0", "buffered-1", "buffered-2"]


def test_stop_trying_drops_a_waiting_retry() -> None:
    made = in_state(S.WAITING_TO_RETRY)
    made.factory.stopTrying()
    assert made.factory.state is S.STOPPED and made.clock.getDelayedCalls() == []
    assert made.factory.no_connection_reason == "reconnecting was stopped (stopTrying)"


def test_stop_trying_while_connected_ends_at_the_next_loss() -> None:
    made = in_state(S.CONNECTED)
    made.factory.stopTrying()
    assert made.factory.connected and not made.factory.retrying
    made.lose()
    assert made.factory.state is S.STOPPED
    assert made.factory.no_connection_reason == "the connection is lost and reconnecting was stopped (stopTrying)"


def test_max_retries_gives_up() -> None:
    made = driver()
    made.factory.maxRetries = 2
    made.connect()
    attempt_times(made, 2)
    made.fail()
    assert made.factory.state is S.STOPPED
    assert made.factory.no_connection_reason == "connecting failed and maxRetries=2 was reached"


def test_an_endpoint_that_raises_is_a_failed_attempt() -> None:
    class Broken(FakeEndpoint):
        def connect(self, factory: Any) -> Any:
            raise ConnectionRefusedError("no route")

    made = driver()
    made.factory.connect(Broken(made.clock))
    assert made.factory.state is S.WAITING_TO_RETRY


# -- bad input ------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_naming_them() -> None:
    made = driver()
    with pytest.raises(TypeError, match="endpoint must provide IStreamClientEndpoint"):
        made.factory.connect("tcp:host=localhost:port=8081")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="description must be a str"):
        made.factory.connect(made.endpoint, 8081)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a finite number >= 0"):
        made.factory.stop(-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        made.factory.stop("5")  # type: ignore[arg-type]
    assert made.factory.state is S.NEVER_STARTED
    made.connect().succeed()
    assert describe(made.factory.request("room_members")) == (  # type: ignore[arg-type]
        "fails TypeError: request must be a pystrands.wire.Request, not str")


def test_the_factory_refuses_a_connection_it_did_not_make() -> None:
    """Handed to connectTCP, it refuses the connection with an error saying why, and retries nothing."""
    reactor = MemoryReactorClock()
    factory = BrokerClientFactory(Backend(), reactor)
    connector = reactor.connectTCP("127.0.0.1", 8081, factory)
    with pytest.raises(RuntimeError, match=r"factory.connect\(endpoint\)"):
        factory.buildProtocol(None)
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    factory.clientConnectionLost(connector, Failure(ConnectionRefusedError()))
    assert reactor.getDelayedCalls() == [] and factory.state is S.NEVER_STARTED


# -- logs ----------------------------------------------------------------------------------------


def lines(logged: list[dict[str, Any]], level: LogLevel, containing: str = "") -> list[str]:
    texts = [formatEvent(event) for event in logged if event.get("log_level") is level]
    return [text for text in texts if containing in text]


def test_describing_the_destination() -> None:
    made = driver().connect()
    assert made.factory.destination == "broker.test:8081"
    named = driver()
    named.factory.connect(named.endpoint, "localhost:8081")
    assert named.factory.destination == "localhost:8081"

    nameless = driver()
    endpoint = FakeEndpoint(nameless.clock, host=None)  # type: ignore[arg-type]
    nameless.factory.connect(endpoint)
    assert nameless.factory.destination.startswith("FakeEndpoint(clock=")  # its repr


def test_the_first_failure_warns_naming_the_broker_and_the_reason(logged: list[dict[str, Any]]) -> None:
    made = driver().connect()
    made.fail()
    (warning,) = lines(logged, LogLevel.warn)
    assert warning == ("Connecting to the broker at broker.test:8081 failed (Connection was refused by other side:"
                       " Connection refused.); retrying in 1.0s")


def test_further_failures_warn_at_doubling_counts(logged: list[dict[str, Any]]) -> None:
    made = driver().connect()
    attempt_times(made, 9)
    failed = lines(logged, LogLevel.warn, "Connecting to the broker at broker.test:8081 failed")
    assert len(failed) == 4  # the 1st, 2nd, 4th, 8th
    assert "2 failures in a row, retrying in 2.0s" in failed[1] and "8 failures in a row" in failed[3]
    assert len(lines(logged, LogLevel.debug, "Connecting to the broker at broker.test:8081 failed")) == 5
    made.succeed()
    assert lines(logged, LogLevel.info, "Connected to the broker at broker.test:8081 after 9 failed attempts")


def test_a_lost_connection_warns_once(logged: list[dict[str, Any]]) -> None:
    made = driver().connect().succeed()
    made.feed(HEARTBEAT)
    made.lose()
    assert lines(logged, LogLevel.warn) == [
        ("Lost the connection to the broker at broker.test:8081 (Connection to the other side was lost in a"
         " non-clean fashion: the broker went away.); retrying in 1.0s")]


def test_without_retries_the_failure_says_so(logged: list[dict[str, Any]]) -> None:
    made = driver(auto_reconnect=False).connect()
    made.fail(ConnectionRefusedError("nobody home"))
    (warning,) = lines(logged, LogLevel.warn)
    assert warning.endswith("nobody home.); not retrying (auto_reconnect is off)")


def test_a_stop_logs_no_warning(logged: list[dict[str, Any]]) -> None:
    made = driver().connect().succeed()
    made.factory.stop()
    made.clock.advance(0)
    stopping = driver().connect()
    stopping.factory.stop()
    assert lines(logged, LogLevel.warn) == []


def test_requests_fail_when_the_connection_is_lost() -> None:
    made = driver().connect().succeed()
    made.feed({"request_id": "hello", "action": "hello", "params": {"protocol": 1, "features": ["join_room"]}})
    asked = made.factory.join_room("c", "r")
    assert [frame["action"] for frame in made.sent()] == [wire.JOIN_ROOM]
    made.lose()
    assert describe(asked).startswith(NOT_CONNECTED + "the connection was lost before the reply")
    assert isinstance(outcome(made.factory.join_room("c", "r")).value, NotConnectedError)


# -- a flapping connection: the broker accepts, then closes before its first frame ---------------------

def flap_for(made: Driver, seconds: float) -> list[float]:
    """Until ``seconds`` on the clock, each attempt connects and the broker closes it at once; their times."""
    times = []
    while made.clock.seconds() <= seconds:
        times.append(made.clock.seconds())
        made.succeed().lose()
        made.clock.advance(made.clock.getDelayedCalls()[0].getTime() - made.clock.seconds())
    return times


def test_a_flapping_connection_backs_off_and_warns_at_doubling_counts(logged: list[dict[str, Any]]) -> None:
    """A wrong backend_token: it used to reconnect every 0.2 s, with a warning and an INFO line each time."""
    made = driver(reconnect_delay=0.2).connect()
    assert flap_for(made, 3.0) == pytest.approx([0.0, 0.2, 0.6, 1.4, 3.0])  # waits 0.2, 0.4, 0.8, 1.6
    ended = lines(logged, LogLevel.warn, "ended before its first frame")
    assert len(ended) == 3  # the 1st, 2nd and 4th in a row; the 3rd and 5th at debug
    assert ended[0] == (
        "The connection to the broker at broker.test:8081 ended before its first frame (Connection to the other"
        " side was lost in a non-clean fashion: the broker went away.), a failed attempt (is backend_token"
        " right?); retrying in 0.2s")
    assert "4 failures in a row, retrying in 1.6s" in ended[2]
    assert len(lines(logged, LogLevel.debug, "ended before its first frame")) == 2
    # Connecting again after a loss the log was quiet about is quiet too.
    assert lines(logged, LogLevel.info, "Connected to the broker") == [
        "Connected to the broker at broker.test:8081",
        "Connected to the broker at broker.test:8081 after 1 failed attempt",
        "Connected to the broker at broker.test:8081 after 2 failed attempts",
        "Connected to the broker at broker.test:8081 after 4 failed attempts"]
    assert lines(logged, LogLevel.debug, "Connected to the broker") == [
        "Connected to the broker at broker.test:8081 after 3 failed attempts"]


FIRST_FRAMES = {
    "heartbeat": HEARTBEAT,  # the reference broker's first frame when nothing happens
    "hello": HELLO_FRAME,  # ours, at once
    "event": frame_from_transcript("new_message"),
}


@pytest.mark.parametrize("first", list(FIRST_FRAMES))
def test_the_first_frame_proves_a_connection_and_resets_the_backoff(
        first: str, logged: list[dict[str, Any]]) -> None:
    made = driver().connect()
    flap_for(made, 5.0)  # waits 1, 2, 4: the next would be 8
    made.succeed()
    made.feed(FIRST_FRAMES[first])
    made.lose()
    assert made.clock.getDelayedCalls()[0].getTime() - made.clock.seconds() == 1.0  # from the start again
    assert lines(logged, LogLevel.warn)[-1].startswith("Lost the connection to the broker at broker.test:8081")
    made.clock.advance(1.0)
    made.succeed()
    assert lines(logged, LogLevel.info)[-1] == "Connected to the broker at broker.test:8081 after 1 failed attempt"


def test_a_refused_attempt_after_quiet_flaps_is_followed_by_a_logged_connect(logged: list[dict[str, Any]]) -> None:
    made = driver().connect()
    flap_for(made, 3.0)  # three flaps: the 3rd in a row at debug
    made.fail()  # the 4th, warned
    made.clock.advance(8.0)
    made.succeed()
    assert lines(logged, LogLevel.info)[-1] == "Connected to the broker at broker.test:8081 after 4 failed attempts"


def test_flaps_count_towards_max_retries() -> None:
    made = driver()
    made.factory.maxRetries = 2
    made.connect()
    flap_for(made, 1.0)  # two flaps
    made.succeed().lose()
    assert made.factory.state is S.STOPPED
    assert made.factory.no_connection_reason == "the connection is lost and maxRetries=2 was reached"

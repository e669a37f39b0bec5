"""Frames -> backend calls, driven by hand: malformed contexts, long lines, order, backpressure, idleness.

Deterministic: the driver of tests/support/driver.py, frames from the reference broker's transcript.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent

from pystrands import Backend, Context
from pystrands.lifecycle import ConnectionState
from tests.support.driver import Driver, Recorder, frame_from_transcript

#: Settings that keep timers out of the tests' way unless a test asks for them.
QUIET = {"idle_timeout": 0, "reconnect_delay": 1.0, "max_reconnect_delay": 1.0}


def warnings(logged: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in logged if event.get("log_level") is LogLevel.warn]


def message(text: str, client_id: str = "c1") -> dict[str, Any]:
    frame = frame_from_transcript("new_message", message=text)
    frame["params"]["context"]["client_id"] = client_id
    return frame


# -- frames without a context object --------------------------------------------------------------


CONTEXT_EVENTS = ["new_message", "new_connection", "disconnected", "error"]


def test_the_reference_broker_always_sends_a_context_object() -> None:
    """What makes a frame without one malformed: every recorded event of these actions has one."""
    from tests.support import transcript

    for action in CONTEXT_EVENTS:
        recorded = transcript.frames("broker", action)
        assert recorded and all(isinstance(frame["params"].get("context"), dict) for frame in recorded)


@pytest.mark.parametrize("action", CONTEXT_EVENTS)
@pytest.mark.parametrize("context", ["absent", None, "oops", [1], 7])
def test_a_frame_without_a_context_object_is_skipped_and_logged(
        logged: list[dict[str, Any]], action: str, context: Any) -> None:
    made = Driver(**QUIET).connect().succeed()
    frame = frame_from_transcript(action)
    if context == "absent":
        del frame["params"]["context"]
    else:
        frame["params"]["context"] = context
    made.feed(frame, message("after"))
    assert made.backend.names() == ["on_message"], "only the well-formed frame reached the backend"
    kind = "NoneType" if context == "absent" else type(context).__name__
    assert warnings(logged) == [
        f"Skipped a {action} frame without a context object ({kind})"]
    assert made.factory.connected


def test_a_flood_of_frames_without_context_logs_once_a_second(logged: list[dict[str, Any]]) -> None:
    made = Driver(**QUIET).connect().succeed()
    bad = frame_from_transcript("new_message")
    del bad["params"]["context"]
    made.feed(*[bad] * 500)
    made.clock.advance(1.0)
    made.feed(bad)
    assert warnings(logged) == [
        "Skipped a new_message frame without a context object (NoneType)",
        "Skipped a new_message frame without a context object (NoneType); 499 more since the last warning",
    ]
    assert made.backend.events == []


def test_an_error_frame_keeps_the_failed_requests_context() -> None:
    made = Driver(**QUIET).connect().succeed()
    made.feed(frame_from_transcript("error"))
    [(name, (error, context))] = made.backend.events
    assert name == "on_error" and error == "no backend available to handle connection request"
    assert context.client_id is None and context.metadata["url"] == "/ws/lobby/erin"


# -- long lines ---------------------------------------------------------------------------------------


def test_oversized_lines_are_discarded_up_to_their_newline(logged: list[dict[str, Any]]) -> None:
    made = Driver(max_line_length=1024, **QUIET).connect().succeed()
    big = json.dumps(message("x" * 5000)).encode()
    made.feed(big + b"\n", message("after-one-chunk"))
    for piece in range(0, len(big), 700):  # the same line in separate reads
        made.feed(big[piece:piece + 700])
    made.feed(b"\n", message("after-pieces"))
    assert [args[0] for _, args in made.backend.events] == ["after-one-chunk", "after-pieces"]
    assert [text for text in warnings(logged) if "longer than 1024 bytes" in text] != []
    assert made.factory.connected


# -- order and concurrency ------------------------------------------------------------------------------


class Gate(Recorder):
    """on_message returns a Deferred the test fires; records which messages started."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, Deferred[None]] = {}

    def on_message(self, message: str, context: Context) -> Deferred[None]:
        super().on_message(message, context)
        gate = self.gates[message] = Deferred()
        return gate

    def started(self) -> list[str]:
        return [args[0] for _, args in self.events]


@pytest.mark.parametrize("concurrency", [1, 8])
def test_order_per_client_and_concurrency_across_clients(concurrency: int) -> None:
    backend = Gate()
    made = Driver(backend, concurrency=concurrency, **QUIET).connect().succeed()
    made.feed(*[message(text, client) for text, client in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A")]])
    assert backend.started() == (["a1", "b1"] if concurrency > 1 else ["a1"])
    backend.gates["a1"].callback(None)
    if concurrency == 1:
        assert backend.started() == ["a1", "b1"]
        backend.gates["b1"].callback(None)
    assert backend.started() == ["a1", "b1", "a2"]
    backend.gates["a2"].callback(None)
    assert backend.started() == ["a1", "b1", "a2", "a3"]


# -- backpressure ------------------------------------------------------------------------------------------


def test_slow_handlers_pause_reading_and_bound_memory() -> None:
    """The broker's data is fed only while the transport produces, as a socket would be read."""
    backend = Gate()
    made = Driver(backend, max_pending_events=8, **QUIET).connect().succeed()
    total, per_read = 300, 5
    pending = [message(str(n), f"c{n % 3}") for n in range(total)]
    most_pending = 0
    paused_seen = False
    while pending or any(not gate.called for gate in backend.gates.values()):
        if made.transport.producerState == "producing" and pending:
            made.feed(*pending[:per_read])
            del pending[:per_read]
        else:
            paused_seen = paused_seen or made.transport.producerState == "paused"
            next(gate for gate in backend.gates.values() if not gate.called).callback(None)
        most_pending = max(most_pending, made.factory.dispatcher.pending_events)
    handled = [int(text) for text in backend.started()]
    assert sorted(handled) == list(range(total))
    for client in range(3):
        mine = [n for n in handled if n % 3 == client]
        assert mine == sorted(mine), "per-client order kept"
    assert paused_seen, "reading paused while handlers were behind"
    assert most_pending <= 8 + per_read
    assert made.transport.producerState == "producing", "reading resumed once caught up"


# -- idleness --------------------------------------------------------------------------------------------


def test_an_idle_broker_is_dropped_and_heartbeats_keep_it() -> None:
    made = Driver(Backend(), idle_timeout=45.0, reconnect_delay=1.0, max_reconnect_delay=1.0).connect().succeed()
    heartbeat = {"request_id": "heartbeat", "action": "heartbeat", "params": {}}  # PROTOCOL.md: every 15 s
    for _ in range(6):
        made.clock.advance(15.0)
        made.feed(heartbeat)
    assert made.factory.connected and not made.transport.disconnecting
    made.clock.advance(44.9)
    assert not made.transport.disconnecting
    made.clock.advance(0.1)
    made.clock.advance(0)  # the last look, one reactor turn later
    assert made.transport.disconnecting, "silent for the idle timeout: dropped"
    made.clock.advance(0)
    assert made.factory.state is ConnectionState.WAITING_TO_RETRY
    made.clock.advance(1.0)
    made.succeed()
    assert made.factory.connected


def test_an_answer_whose_metadata_json_cannot_carry_rejects_the_client_and_says_why(
        logged: list[dict[str, Any]]) -> None:
    """NaN and infinity are no JSON numbers: the encoder would have sent null in their place."""
    class Scoring(Backend):
        def on_connection_request(self, request: Any) -> bool:
            request.context.metadata = {"score": float("inf")}
            return True

    made = Driver(Scoring(), **QUIET).connect().succeed()
    made.sent()
    made.feed(frame_from_transcript("connection_request"))
    [answer] = made.sent()
    assert answer["action"] == "response" and answer["params"]["accepted"] is False
    assert [formatEvent(event) for event in logged if event.get("log_level") is LogLevel.error] == [
        f"Rejected connection request {answer['request_id']}: its answer is not valid"
        " (metadata cannot be encoded as JSON: inf is not a JSON number)"]

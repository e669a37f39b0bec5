"""The protocol extension on the backend side (issue 14): hello, requests, replies, timeouts.

Deterministic: a Clock and an in-memory transport, frames as the spec writes them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from pystrands import Backend, BrokerRefused, Context, NotConnectedError, NotSupportedError, wire
from pystrands.lifecycle import ConnectionState
from pystrands.protocol import context_from_wire
from tests.support.driver import Driver

ALL = ["room_members", "disconnect_client", "join_room", "leave_room", "set_metadata"]
HELLO = {"request_id": "hello", "action": "hello",
         "params": {"protocol": 1, "broker": "pystrands-twisted", "version": "0.1.0", "features": ALL}}


HEARTBEAT = {"request_id": "hb", "action": "heartbeat", "params": {}}


class Rig(Driver):
    """A Driver connected once, without reconnects or idle checks unless told otherwise."""

    def __init__(self, backend: Backend | None = None, **options: Any) -> None:
        super().__init__(backend if backend is not None else Backend(),
                         **{"auto_reconnect": False, "idle_timeout": 0, **options})
        self.connect().succeed()


def skipped_replies(logged: list[dict[str, Any]]) -> list[str]:
    return [event["request_id"] for event in logged if "reply to no pending request" in event.get("log_format", "")]


def result_of(deferred: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def reply(request_id: str, **params: Any) -> dict[str, Any]:
    return {"request_id": request_id, "action": "reply", "params": params}


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_no_hello_means_not_supported_and_nothing_written(rig: Rig) -> None:
    rig.feed(HEARTBEAT)  # the reference broker's first frame is no hello
    for call in (lambda b: b.room_members("lobby"), lambda b: b.disconnect_client("c"),
                 lambda b: b.join_room("c", "r"), lambda b: b.leave_room("c", "r"),
                 lambda b: b.set_metadata("c", {})):
        with pytest.raises(NotSupportedError, match="does not announce"):
            result_of(call(rig.factory))
    assert rig.sent() == []


def test_hello_features_are_per_connection() -> None:
    rig = Rig(auto_reconnect=True, reconnect_delay=1.0, max_reconnect_delay=1.0)
    rig.feed({**HELLO, "params": {**HELLO["params"], "features": ["room_members"]}})
    assert rig.protocol.features == frozenset({"room_members"})
    with pytest.raises(NotSupportedError) as info:
        result_of(rig.factory.join_room("c", "r"))
    assert info.value.feature == "join_room" and "join_room" in str(info.value)
    rig.factory.room_members("lobby")
    assert [f["action"] for f in rig.sent()] == ["room_members"]
    rig.lose()
    rig.clock.advance(rig.factory.settings.reconnect_delay)
    rig.succeed()  # a reconnect: the next broker has announced nothing yet
    rig.feed(HEARTBEAT)
    with pytest.raises(NotSupportedError):
        result_of(rig.factory.room_members("lobby"))


def test_room_members_reply_gives_contexts_with_rooms(rig: Rig) -> None:
    rig.feed(HELLO)
    answer = rig.factory.room_members("lobby")
    (request,) = rig.sent()
    assert request["action"] == "room_members" and request["params"] == {"room_id": "lobby"}
    rig.feed(reply(request["request_id"], ok=True, result=[
        {"client_id": "a", "room_id": "lobby", "metadata": {"name": "ann"}, "rooms": ["lobby", "game-7"]},
        {"client_id": "b", "room_id": "hall", "metadata": {}, "rooms": ["hall", "lobby"]},
    ]))
    members = result_of(answer)
    assert [m.client_id for m in members] == ["a", "b"]
    assert members[0].rooms == ["lobby", "game-7"] and members[0].metadata == {"name": "ann"}
    assert members[1].room_id == "hall"


def test_bool_replies_and_unique_ids(rig: Rig) -> None:
    rig.feed(HELLO)
    calls = [rig.factory.disconnect_client("a", 4000, "kicked"), rig.factory.join_room("a", "r"),
             rig.factory.leave_room("a", "r"), rig.factory.set_metadata("a", {"n": 2})]
    frames = rig.sent()
    assert [f["action"] for f in frames] == ["disconnect_client", "join_room", "leave_room", "set_metadata"]
    assert frames[0]["params"] == {"client_id": "a", "code": 4000, "reason": "kicked"}
    assert frames[3]["params"] == {"client_id": "a", "metadata": {"n": 2}}
    assert len({f["request_id"] for f in frames}) == 4
    # Replies in another order still reach their own request.
    for frame, ok in reversed(list(zip(frames, [True, False, True, False], strict=True))):
        rig.feed(reply(frame["request_id"], ok=True, result=ok))
    assert [result_of(d) for d in calls] == [True, False, True, False]


def test_refused_reply_carries_the_brokers_text(rig: Rig) -> None:
    rig.feed(HELLO)
    answer = rig.factory.set_metadata("a", 1)
    (request,) = rig.sent()
    rig.feed(reply(request["request_id"], ok=False, error="metadata too large"))
    with pytest.raises(BrokerRefused, match="metadata too large") as info:
        result_of(answer)
    assert info.value.reason == "metadata too large" and isinstance(info.value, ValueError)


def test_timeout_after_ten_seconds_on_the_clock(rig: Rig, logged: list[dict[str, Any]]) -> None:
    rig.feed(HELLO)
    answer = rig.factory.room_members("lobby")
    (request,) = rig.sent()
    rig.clock.advance(9.9)
    assert not answer.called
    rig.clock.advance(0.2)
    with pytest.raises(TimeoutError, match="room_members"):
        result_of(answer)
    rig.feed(reply(request["request_id"], ok=True, result=[]))  # late: logged and skipped
    assert skipped_replies(logged) == [request["request_id"]]


def test_connection_loss_fails_pending_requests(rig: Rig) -> None:
    rig.feed(HELLO)
    answers = [rig.factory.room_members("lobby"), rig.factory.join_room("a", "b")]
    rig.lose()
    for answer in answers:
        with pytest.raises(NotConnectedError, match="lost before the reply"):
            result_of(answer)
    assert rig.clock.getDelayedCalls() == []
    with pytest.raises(NotConnectedError):
        result_of(rig.factory.room_members("lobby"))


def test_cancel_forgets_the_request(rig: Rig, logged: list[dict[str, Any]]) -> None:
    rig.feed(HELLO)
    answer = rig.factory.room_members("lobby")
    (request,) = rig.sent()
    answer.cancel()
    answer.addErrback(lambda _: None)
    assert rig.clock.getDelayedCalls() == []
    rig.feed(reply(request["request_id"], ok=True, result=[]))
    assert skipped_replies(logged) == [request["request_id"]]


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda b: b.room_members(7), TypeError, "room_id must be a str"),
    (lambda b: b.disconnect_client(None), TypeError, "client_id must be a str"),
    (lambda b: b.disconnect_client("a", 999), ValueError, "code must be 1000 or 3000-4999"),
    (lambda b: b.disconnect_client("a", 5000), ValueError, "code"),
    (lambda b: b.disconnect_client("a", "4000"), TypeError, "code must be an int"),
    (lambda b: b.disconnect_client("a", 4000, "é" * 62), ValueError, "reason must be at most 123 bytes"),
    (lambda b: b.disconnect_client("a", 4000, b"x"), TypeError, "reason must be a str"),
    (lambda b: b.join_room("a", None), TypeError, "room_id"),
    (lambda b: b.leave_room(1, "r"), TypeError, "client_id"),
    (lambda b: b.set_metadata("a", {1j}), TypeError, "metadata must be JSON-serialisable"),
])
def test_argument_errors_write_nothing(rig: Rig, call: Any, error: type, match: str) -> None:
    rig.feed(HELLO)
    with pytest.raises(error, match=match):
        result_of(call(rig.factory))
    assert rig.sent() == []


def test_reason_of_123_bytes_is_fine() -> None:
    wire.disconnect_client_request("a", 4999, "é" * 61 + "x")
    wire.disconnect_client_request("a", 1000)


def test_decode_hello_and_reply() -> None:
    hello = wire.decode_hello(HELLO["params"])
    assert hello.protocol == 1 and hello.features == frozenset(ALL) and hello.broker == "pystrands-twisted"
    with pytest.raises(wire.ProtocolError):
        wire.decode_hello({"protocol": "1"})
    with pytest.raises(wire.ProtocolError):
        wire.decode_hello({"protocol": 1, "features": "room_members"})
    assert wire.decode_reply({"ok": True, "result": True}) == wire.Reply(True, True, "")
    assert wire.decode_reply({"ok": False, "error": "bad code"}).error == "bad code"
    with pytest.raises(wire.ProtocolError):
        wire.decode_reply({"result": 1})


def test_request_frame_is_one_json_line() -> None:
    line = wire.set_metadata_request("a", {"k": [1, "é"]}).frame("x1")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"request_id": "x1", "action": "set_metadata",
                                "params": {"client_id": "a", "metadata": {"k": [1, "é"]}}}


def test_malformed_hello_is_skipped_and_connection_kept(rig: Rig) -> None:
    rig.feed({"request_id": "hello", "action": "hello", "params": {"features": 3}})
    assert rig.protocol.features == frozenset()
    rig.feed(HELLO)
    assert rig.protocol.features == frozenset(ALL)


def test_context_rooms_default_and_wire() -> None:
    assert Context(client_id="a", room_id="lobby", metadata={}).rooms == ["lobby"]
    assert context_from_wire({"client_id": "a", "room_id": "lobby", "metadata": {}}).rooms == ["lobby"]
    context = context_from_wire({"client_id": "a", "room_id": "lobby", "metadata": {}, "rooms": ["x", "y"]})
    assert context.rooms == ["x", "y"] and context.room_id == "lobby"
    assert context.to_json() == {"client_id": "a", "room_id": "lobby", "metadata": {}}  # documented keys


def test_stop_fails_pending_and_new_requests_at_once(rig: Rig) -> None:
    """Stopping pauses reading, so no reply could come: waiting handlers must not wait out the timeout."""
    rig.feed(HELLO)
    answer = rig.factory.room_members("lobby")
    rig.factory.stop()
    with pytest.raises(NotConnectedError, match="stopped"):
        result_of(answer)
    with pytest.raises(NotConnectedError, match="stopped"):
        result_of(rig.factory.join_room("a", "b"))


def test_malformed_replies(rig: Rig) -> None:
    """A reply without a bool ``ok`` fails its request with ProtocolError at once (timer cancelled); a
    room_members result that is not a list fails the call with ProtocolError; a reply to no request is skipped."""
    rig.feed(HELLO)
    bad = rig.factory.join_room("a", "b")
    (request,) = rig.sent()
    rig.feed(reply(request["request_id"], ok="yes", result=True))
    with pytest.raises(wire.ProtocolError):
        result_of(bad)
    assert rig.clock.getDelayedCalls() == []
    answer = rig.factory.room_members("lobby")
    (request,) = rig.sent()
    rig.feed(reply("no-such-request", ok=True, result=True))
    rig.feed(reply(request["request_id"], ok=True, result={"client_id": "a"}))
    with pytest.raises(wire.ProtocolError, match="not a list"):
        result_of(answer)
    assert rig.clock.getDelayedCalls() == [] and rig.factory.connected


# -- requests before the hello (the first frame decides) ----------------------------------------


def test_requests_right_after_connect_wait_for_the_hello(rig: Rig) -> None:
    first, second = rig.factory.room_members("lobby"), rig.factory.join_room("a", "b")
    assert not first.called and not second.called and rig.sent() == []
    rig.clock.advance(1.9)
    rig.feed({**HELLO, "params": {**HELLO["params"], "features": ["room_members"]}})
    (request,) = rig.sent()  # the announced one is sent, the other fails, nothing written for it
    assert request["action"] == "room_members"
    with pytest.raises(NotSupportedError, match="join_room: the broker does not announce"):
        result_of(second)
    rig.feed(reply(request["request_id"], ok=True, result=[]))
    assert result_of(first) == []
    assert rig.clock.getDelayedCalls() == []


def test_another_first_frame_fails_held_requests(rig: Rig) -> None:
    answer = rig.factory.room_members("lobby")
    rig.feed(HEARTBEAT)
    with pytest.raises(NotSupportedError, match="does not announce") as info:
        result_of(answer)
    assert info.value.feature == "room_members"
    assert rig.sent() == [] and rig.clock.getDelayedCalls() == []


def test_no_frame_within_two_seconds_fails_held_requests(rig: Rig) -> None:
    rig.clock.advance(0.5)
    answer = rig.factory.disconnect_client("a")
    rig.clock.advance(1.4)
    assert not answer.called
    rig.clock.advance(0.1)  # 2 s from the connection, not from the call
    with pytest.raises(NotSupportedError, match="no hello arrived on this connection") as info:
        result_of(answer)
    assert info.value.feature == "disconnect_client"
    with pytest.raises(NotSupportedError, match="no hello arrived on this connection"):
        result_of(rig.factory.room_members("lobby"))  # past the deadline: at once
    assert rig.sent() == [] and rig.clock.getDelayedCalls() == []


def test_cancelling_a_held_request_forgets_it(rig: Rig) -> None:
    answer = rig.factory.room_members("lobby")
    answer.cancel()
    answer.addErrback(lambda _: None)
    assert rig.clock.getDelayedCalls() == []
    rig.feed(HELLO)
    assert rig.sent() == []


def test_connection_loss_fails_held_requests(rig: Rig) -> None:
    answer = rig.factory.room_members("lobby")
    rig.lose()
    with pytest.raises(NotConnectedError, match="lost before the reply"):
        result_of(answer)
    assert rig.clock.getDelayedCalls() == []


# -- failing pending requests ---------------------------------------------------------------


def test_each_failed_request_gets_its_own_exception(rig: Rig) -> None:
    rig.feed(HELLO)
    answers: list[Deferred[Any]] = [rig.factory.room_members("lobby"), rig.factory.join_room("a", "b")]
    rig.lose()
    errors: list[BaseException] = []
    for answer in answers:
        answer.addErrback(lambda failure: errors.append(failure.value))
    assert len(errors) == 2 and errors[0] is not errors[1]
    assert all(isinstance(error, NotConnectedError) for error in errors)


def test_loss_tells_the_factory_before_failing_requests() -> None:
    """An errback that sends is buffered for the reconnect; one that asks again gets NotConnectedError."""
    rig = Rig(auto_reconnect=True, reconnect_delay=1.0, max_reconnect_delay=1.0)
    rig.feed(HELLO)
    rig.sent()
    outcomes: list[Any] = []
    lost = rig.protocol

    def again(_: Failure) -> None:
        outcomes.append(rig.factory.send_room_message("lobby", "bye"))
        outcomes.append(rig.factory.room_members("lobby"))
        outcomes.append(lost.request(wire.room_members_request("lobby"), 10.0))

    rig.factory.room_members("lobby").addErrback(again)
    rig.sent()
    rig.lose()
    buffered, asked, direct = outcomes
    assert not buffered.called and rig.transport.value() == b""
    with pytest.raises(NotConnectedError):
        result_of(asked)
    with pytest.raises(NotConnectedError):
        result_of(direct)
    assert rig.factory.state is ConnectionState.WAITING_TO_RETRY and len(rig.clock.getDelayedCalls()) == 1
    rig.clock.advance(1.0)
    rig.succeed()
    assert result_of(buffered) is None
    assert [frame["params"]["message"] for frame in rig.sent()] == ["bye"]


# -- backpressure never hides a reply ---------------------------------------------------------


def message(client_id: str, text: str = "hi") -> dict[str, Any]:
    return {"request_id": f"m-{client_id}", "action": "new_message",
            "params": {"message": text, "context": {"client_id": client_id, "room_id": "lobby", "metadata": {}}}}


class Waiting(Backend):
    """Client ``a`` asks for the room's members and waits; the others hold their slot until released."""

    def __init__(self) -> None:
        super().__init__()
        self.members: list[Any] = []
        self.held: list[Deferred[None]] = []

    def on_message(self, message: str, context: Context) -> Deferred[Any]:
        if context.client_id == "a":
            return self.broker.room_members("lobby").addCallback(self.members.append)
        held: Deferred[None] = Deferred()
        self.held.append(held)
        return held


def test_replies_are_read_while_handlers_fall_behind() -> None:
    backend = Waiting()
    rig = Rig(backend, concurrency=1, max_pending_events=2)
    rig.feed(HELLO)
    rig.feed(message("a"))
    (request,) = rig.sent()
    for client in "bcd":
        rig.feed(message(client))
    assert rig.factory.dispatcher.busy
    assert rig.transport.producerState == "producing"  # a request waits: its reply must be readable
    rig.feed(reply(request["request_id"], ok=True, result=[]))
    assert backend.members == [[]]
    # No request waits now and the dispatcher is still busy: the pause asked for is made.
    assert rig.factory.dispatcher.busy and rig.transport.producerState == "paused"
    for held in list(backend.held):
        held.callback(None)
    for held in list(backend.held):
        if not held.called:
            held.callback(None)
    assert rig.transport.producerState == "producing"


def test_a_request_made_while_paused_resumes_reading(rig: Rig) -> None:
    rig.feed(HELLO)
    rig.protocol.pause_reading()
    assert rig.transport.producerState == "paused"
    answer = rig.factory.room_members("lobby")
    assert rig.transport.producerState == "producing"
    (request,) = rig.sent()
    rig.feed(reply(request["request_id"], ok=True, result=[]))
    assert result_of(answer) == []
    # The dispatcher is idle by now: the remembered pause is dropped, reading goes on.
    assert rig.transport.producerState == "producing"


def test_timeout_applies_the_remembered_pause() -> None:
    rig = Rig(Waiting(), concurrency=1, max_pending_events=2)
    rig.feed(HELLO)
    rig.feed(message("a"))
    rig.sent()
    for client in "bcd":
        rig.feed(message(client))
    assert rig.transport.producerState == "producing"
    rig.clock.advance(10)  # no reply: memory stays bounded by the request timeout
    assert rig.transport.producerState == "paused"


def test_a_refused_request_leaves_a_pause_alone(rig: Rig) -> None:
    rig.feed({**HELLO, "params": {**HELLO["params"], "features": []}})
    rig.protocol.pause_reading()
    with pytest.raises(NotSupportedError):
        result_of(rig.factory.room_members("lobby"))
    assert rig.transport.producerState == "paused"

"""The protocol extensions (docs/PROTOCOL-EXTENSIONS.md) on the embedded broker, with raw TCP backends.

``hello`` first to each ready backend; ``room_members``, ``disconnect_client``,
``join_room``, ``leave_room`` and ``set_metadata``, each answered by one
``reply``; the ``rooms`` of every client context; bad params refused with
``ok: false`` and the connection kept.
"""

from __future__ import annotations

import itertools
import queue
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

import pystrands
from pystrands import ConnectionRequestContext, Context, NotSupportedError, PyStrandsClient
from pystrands.broker import extensions
from pystrands.broker.rooms import Rooms
from tests.support.fakebroker import BackendConnection

from .conftest import TIMEOUT, RunningBroker

FEATURES = ["room_members", "disconnect_client", "join_room", "leave_room", "set_metadata"]
_ids = itertools.count(1)


def ask(backend: BackendConnection, action: str, params: Any, request_id: str | None = None) -> dict[str, Any]:
    """Send one extension request; the params of its reply (the next frame that is not a heartbeat)."""
    request_id = request_id or f"q{next(_ids)}"
    backend.send_frame({"request_id": request_id, "action": action, "params": params})
    frame = backend.recv_frame()
    while frame["action"] == "heartbeat":
        frame = backend.recv_frame()
    assert frame["action"] == "reply" and frame["request_id"] == request_id, frame
    return frame["params"]  # type: ignore[no-any-return]


def result(backend: BackendConnection, action: str, params: Any) -> Any:
    """The result of a request that must succeed."""
    reply = ask(backend, action, params)
    assert reply["ok"] is True, reply
    return reply["result"]


def next_event(backend: BackendConnection) -> dict[str, Any]:
    """The next event frame (heartbeats skipped)."""
    frame = backend.recv_frame()
    while frame["action"] == "heartbeat":
        frame = backend.recv_frame()
    return frame


def say(broker: RunningBroker, backend: BackendConnection, client: ClientConnection, text: str) -> dict[str, Any]:
    """The context of ``client``'s next message, as the backend receives it."""
    client.send(text)
    event = next_event(backend)
    assert event["action"] == "new_message" and event["params"]["message"] == text, event
    return event["params"]["context"]  # type: ignore[no-any-return]


def texts_until(client: ClientConnection, last: str) -> list[str]:
    """What the client receives up to and including ``last``."""
    received = [client.recv(timeout=TIMEOUT)]
    while received[-1] != last:
        received.append(client.recv(timeout=TIMEOUT))
    return received


def to_room(backend: BackendConnection, room_id: str, message: str) -> None:
    backend.send_frame({"request_id": "s", "action": "message_to_room",
                        "params": {"room_id": room_id, "message": message}})


def to_client(backend: BackendConnection, client_id: str, message: str) -> None:
    backend.send_frame({"request_id": "s", "action": "message_to_connection",
                        "params": {"conn_id": client_id, "message": message}})


# -- hello ---------------------------------------------------------------------


def test_hello_is_the_first_frame_even_before_queued_events(broker: RunningBroker) -> None:
    with pytest.raises(Exception, match="503"):
        broker.open("/ws/lobby/early").result(TIMEOUT)  # no backend: an error event is queued
    backend = broker.backend(hello=False)
    assert backend.recv_frame() == {"request_id": "hello", "action": "hello", "params": {
        "protocol": 1, "broker": "pystrands-twisted", "version": pystrands.__version__, "features": FEATURES}}
    assert next_event(backend)["action"] == "error"


def test_hello_comes_only_after_authentication(start_broker: Any) -> None:
    broker = start_broker(backend_token="s3cret", heartbeat_interval=0.05)
    backend = broker.backend(ready=False)
    backend.assert_silent(0.3)  # not even a heartbeat before the auth frame
    backend.send_frame({"request_id": "a", "action": "auth", "params": {"token": "s3cret"}})
    assert backend.recv_frame()["action"] == "hello"


def test_every_backend_gets_its_own_hello_and_its_own_replies(broker: RunningBroker) -> None:
    first, second = broker.backend(), broker.backend()
    broker.accept(first, "/ws/lobby/a", "a")
    assert ask(second, "room_members", {"room_id": "lobby"}, "same-id")["ok"] is True
    first.assert_silent(0.2)  # the reply went to the backend that asked only


# -- each request ----------------------------------------------------------------


def test_room_members_lists_the_contexts_of_a_room(broker: RunningBroker) -> None:
    backend = broker.backend()
    broker.accept(backend, "/ws/lobby/a", "a", metadata={"user": "ann"})
    broker.accept(backend, "/ws/lobby/b", "b", metadata={"user": "bob"})
    broker.accept(backend, "/ws/other/c", "c", room_id="other")
    members = result(backend, "room_members", {"room_id": "lobby"})
    assert sorted(members, key=lambda context: context["client_id"]) == [
        {"client_id": "a", "room_id": "lobby", "metadata": {"user": "ann"}, "rooms": ["lobby"]},
        {"client_id": "b", "room_id": "lobby", "metadata": {"user": "bob"}, "rooms": ["lobby"]}]
    assert result(backend, "room_members", {"room_id": "nowhere"}) == []


def test_a_reply_over_the_backends_line_limit_is_a_refusal(broker: RunningBroker) -> None:
    """A reply the library would skip as too long is refused instead: the request does not time out."""
    backend = broker.backend()
    broker.accept(backend, "/ws/lobby/a", "a", metadata={"user": "x" * 400})
    full = extensions.reply_frame("q", result(backend, "room_members", {"room_id": "lobby"}))
    broker.thread.call(lambda: setattr(broker.broker, "_event_limit", len(full) - 10))
    reply = ask(backend, "room_members", {"room_id": "lobby"})
    assert reply["ok"] is False and "over the backends' line limit" in reply["error"], reply
    assert reply["error"].startswith("the reply would be "), reply
    assert result(backend, "room_members", {"room_id": "nowhere"}) == []  # small replies still go


def test_disconnect_client_closes_with_the_code_and_reason_then_disconnected(broker: RunningBroker) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    assert result(backend, "disconnect_client", {"client_id": "a", "code": 4001, "reason": "kicked: spam"}) is True
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "kicked: spam")
    event = next_event(backend)
    assert event["action"] == "disconnected" and event["params"]["context"]["client_id"] == "a"
    broker.thread.wait_for(lambda: len(broker.broker.rooms) == 0, "the client to be gone")
    assert result(backend, "disconnect_client", {"client_id": "a", "code": 1000, "reason": ""}) is False


def test_join_room_adds_a_room_and_room_messages_reach_each_member_once(broker: RunningBroker) -> None:
    backend = broker.backend()
    a = broker.accept(backend, "/ws/lobby/a", "a")
    b = broker.accept(backend, "/ws/lobby/b", "b")
    assert result(backend, "join_room", {"client_id": "a", "room_id": "game"}) is True
    assert result(backend, "join_room", {"client_id": "a", "room_id": "game"}) is True  # again: fine
    assert result(backend, "join_room", {"client_id": "b", "room_id": "game"}) is True
    assert result(backend, "join_room", {"client_id": "b", "room_id": "b-only"}) is True
    to_room(backend, "game", "g1")
    to_room(backend, "lobby", "l1")
    to_room(backend, "b-only", "b1")
    backend.send_frame({"request_id": "s", "action": "broadcast", "params": {"message": "all"}})
    to_client(backend, "a", "end")
    to_client(backend, "b", "end")
    assert texts_until(a, "end") == ["g1", "l1", "all", "end"]
    assert texts_until(b, "end") == ["g1", "l1", "b1", "all", "end"]
    members = result(backend, "room_members", {"room_id": "game"})
    assert sorted(member["client_id"] for member in members) == ["a", "b"]


def test_rooms_in_every_context_and_room_id_keeps_the_first_room(broker: RunningBroker) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    assert say(broker, backend, client, "one")["rooms"] == ["lobby"]
    result(backend, "join_room", {"client_id": "a", "room_id": "game"})
    result(backend, "join_room", {"client_id": "a", "room_id": "chess"})
    context = say(broker, backend, client, "two")
    assert (context["room_id"], context["rooms"]) == ("lobby", ["lobby", "game", "chess"])
    assert result(backend, "leave_room", {"client_id": "a", "room_id": "lobby"}) is True
    assert result(backend, "leave_room", {"client_id": "a", "room_id": "lobby"}) is True  # not in it: fine
    context = say(broker, backend, client, "three")
    assert (context["room_id"], context["rooms"]) == ("lobby", ["game", "chess"])
    to_room(backend, "lobby", "not for a")
    to_room(backend, "game", "for a")
    assert client.recv(timeout=TIMEOUT) == "for a"
    client.close()
    event = next_event(backend)
    assert event["action"] == "disconnected" and event["params"]["context"]["rooms"] == ["game", "chess"]


def test_leaving_the_last_room_keeps_the_connection(broker: RunningBroker) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    assert result(backend, "leave_room", {"client_id": "a", "room_id": "lobby"}) is True
    assert result(backend, "room_members", {"room_id": "lobby"}) == []
    assert say(broker, backend, client, "still here")["rooms"] == []
    to_client(backend, "a", "private")
    assert client.recv(timeout=TIMEOUT) == "private"
    assert result(backend, "join_room", {"client_id": "a", "room_id": "back"}) is True
    to_room(backend, "back", "welcome back")
    assert client.recv(timeout=TIMEOUT) == "welcome back"


def test_set_metadata_changes_the_next_events_context(broker: RunningBroker) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a", metadata={"user": "ann"})
    assert say(broker, backend, client, "before")["metadata"] == {"user": "ann"}
    assert result(backend, "set_metadata", {"client_id": "a", "metadata": {"user": "ann", "role": "mod"}}) is True
    assert say(broker, backend, client, "after")["metadata"] == {"user": "ann", "role": "mod"}
    assert result(backend, "room_members", {"room_id": "lobby"})[0]["metadata"] == {"user": "ann", "role": "mod"}
    assert result(backend, "set_metadata", {"client_id": "a", "metadata": [1, "two", None]}) is True
    assert say(broker, backend, client, "any JSON")["metadata"] == [1, "two", None]
    client.close()
    assert next_event(backend)["params"]["context"]["metadata"] == [1, "two", None]


@pytest.mark.parametrize("action, params", [
    ("disconnect_client", {"client_id": "ghost", "code": 4000, "reason": "bye"}),
    ("join_room", {"client_id": "ghost", "room_id": "r"}),
    ("leave_room", {"client_id": "ghost", "room_id": "r"}),
    ("set_metadata", {"client_id": "ghost", "metadata": {}}),
])
def test_an_unknown_client_is_false(broker: RunningBroker, action: str, params: dict[str, Any]) -> None:
    backend = broker.backend()
    assert ask(backend, action, params) == {"ok": True, "result": False}
    assert result(backend, "room_members", {"room_id": "r"}) == []


# -- bad params ----------------------------------------------------------------------

BAD = [
    ("room_members", {}, "'room_id' is missing"),
    ("room_members", {"room_id": 7}, "'room_id' must be a string, not a number"),
    ("join_room", {"room_id": "r"}, "'client_id' is missing"),
    ("join_room", {"client_id": "a", "room_id": None}, "'room_id' must be a string, not null"),
    ("leave_room", {"client_id": ["a"], "room_id": "r"}, "'client_id' must be a string, not an array"),
    ("set_metadata", {"client_id": "a"}, "'metadata' is missing"),
    ("set_metadata", {"client_id": True, "metadata": {}}, "'client_id' must be a string, not a boolean"),
    ("disconnect_client", {"client_id": "a", "reason": ""}, "'code' is missing"),
    ("disconnect_client", {"client_id": "a", "code": 1001, "reason": ""}, "code must be 1000 or 3000-4999"),
    ("disconnect_client", {"client_id": "a", "code": 2999, "reason": ""}, "code must be 1000 or 3000-4999"),
    ("disconnect_client", {"client_id": "a", "code": 5000, "reason": ""}, "code must be 1000 or 3000-4999"),
    ("disconnect_client", {"client_id": "a", "code": 4000.0, "reason": ""}, "'code' must be an integer"),
    ("disconnect_client", {"client_id": "a", "code": True, "reason": ""}, "'code' must be an integer"),
    ("disconnect_client", {"client_id": "a", "code": "4000", "reason": ""}, "'code' must be an integer"),
    ("disconnect_client", {"client_id": "a", "code": 4000}, "'reason' is missing"),
    ("disconnect_client", {"client_id": "a", "code": 4000, "reason": "é" * 62}, "at most 123 bytes of UTF-8 (what a close frame holds), not 124"),
]


@pytest.mark.parametrize("action, params, error", BAD)
def test_bad_params_are_refused_with_one_warning_and_the_connection_kept(
        broker: RunningBroker, broker_warnings: list[str], action: str, params: dict[str, Any], error: str) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    reply = ask(backend, action, params)
    assert reply["ok"] is False and error in reply["error"] and "\n" not in reply["error"], reply
    assert set(reply) == {"ok", "error"}
    warnings = [line for line in broker_warnings if f"Refused a backend's {action} request" in line]
    assert len(warnings) == 1 and error in warnings[0] and '"request_id"' in warnings[0], broker_warnings
    assert result(backend, "room_members", {"room_id": "lobby"})[0]["client_id"] == "a"
    to_client(backend, "a", "still open")
    assert client.recv(timeout=TIMEOUT) == "still open"


def test_a_reason_of_123_bytes_is_fine(broker: RunningBroker) -> None:
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    reason = "é" * 61 + "x"  # 123 bytes
    assert result(backend, "disconnect_client", {"client_id": "a", "code": 1000, "reason": reason}) is True
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == reason


def test_params_that_are_not_an_object_never_reach_the_router(
        broker: RunningBroker, broker_warnings: list[str]) -> None:
    """A frame whose params are not an object is malformed: skipped by the decoder, no reply, link kept."""
    backend = broker.backend()
    backend.send_frame({"request_id": "x", "action": "join_room", "params": ["a", "r"]})
    assert ask(backend, "room_members", {"room_id": "r"}) == {"ok": True, "result": []}
    assert any("malformed" in line for line in broker_warnings)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False,
                    allow_infinity=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                      children, max_size=3),
                    max_leaves=8)
PARAMS = st.dictionaries(st.sampled_from(["client_id", "room_id", "code", "reason", "metadata", "other"]),
                         JSON | st.sampled_from(["a", "b", "lobby", "game"]) | st.integers(990, 5010)
                         | st.text(min_size=100, max_size=140), max_size=5)


def test_random_params_never_crash_and_get_exactly_one_reply(broker: RunningBroker) -> None:
    """Any params for the five requests: one reply each (ok with a result, or not ok with one line)."""
    backend = broker.backend()
    outcomes: list[bool] = []

    @settings(max_examples=150, deadline=None)
    @given(action=st.sampled_from(FEATURES), params=PARAMS)
    def check(action: str, params: dict[str, Any]) -> None:
        if broker.thread.call(lambda: broker.broker.rooms.client("a")) is None:
            broker.accept(backend, "/ws/lobby/a", "a")
        reply = ask(backend, action, params)
        outcomes.append(reply["ok"])
        if reply["ok"]:
            assert set(reply) == {"ok", "result"}
            assert isinstance(reply["result"], list if action == "room_members" else bool)
        else:
            assert set(reply) == {"ok", "error"} and isinstance(reply["error"], str) and "\n" not in reply["error"]
        if action == "disconnect_client" and reply.get("result") is True:
            while next_event(backend)["action"] != "disconnected":
                pass  # the client is gone; the next example connects it again
            broker.thread.wait_for(lambda: broker.broker.rooms.client("a") is None, "the client to go")
        backend.assert_silent(0.0)

    check()
    assert len(outcomes) >= 100 and True in outcomes and False in outcomes
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 1


def test_the_extension_frames_are_those_of_the_module() -> None:
    assert list(extensions.FEATURES) == FEATURES
    assert extensions.MAX_REASON_BYTES == 123


def test_rooms_keeps_membership_in_join_order_and_drops_empty_rooms() -> None:
    rooms: Rooms[str] = Rooms()
    assert rooms.reserve("a") and not rooms.reserve("a")
    rooms.add("a", "lobby", "client-a")
    assert rooms.join("a", "game") == ["lobby", "game"]
    assert rooms.join("a", "lobby") == ["lobby", "game"]
    assert rooms.join("ghost", "game") is None and rooms.leave("ghost", "game") is None
    assert list(rooms.members("game")) == ["client-a"]
    assert rooms.leave("a", "lobby") == ["game"] and list(rooms.members("lobby")) == []
    assert rooms.leave("a", "game") == [] and rooms.client("a") == "client-a" and len(rooms) == 1
    assert rooms.join("a", "x") == ["x"]
    rooms.remove("a")
    assert (len(rooms), rooms.claimed(), rooms.rooms_of("a"), list(rooms.members("x"))) == (0, 0, [], [])
    assert rooms._rooms == {} and rooms._joined == {}


def test_the_librarys_blocking_face_against_the_embedded_broker(broker: RunningBroker) -> None:
    """The library's calls and the broker's replies agree: each request end to end, contexts with rooms."""
    seen: queue.Queue[tuple[str, Context]] = queue.Queue()

    class Backend(PyStrandsClient):
        def on_connection_request(self, request: ConnectionRequestContext) -> bool:
            request.context.client_id = request.url.rsplit("/", 1)[-1]
            request.context.room_id = "lobby"
            request.context.metadata = {"n": 1}
            return True

        def on_message(self, message: str, context: Context) -> None:
            seen.put((message, context))

        def on_disconnect(self, context: Context) -> None:
            seen.put(("gone", context))

    def said(client: ClientConnection, text: str) -> Context:
        client.send(text)
        message, context = seen.get(timeout=TIMEOUT)
        assert message == text
        return context

    backend = Backend(host="127.0.0.1", port=broker.tcp_port, auto_reconnect=False)
    assert backend.connect()
    try:
        broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the library's backend")
        client = broker.open("/ws/lobby/a").result(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while True:  # the hello is read by now, or very soon
            try:
                assert backend.join_room("a", "game").result(TIMEOUT) is True
                break
            except NotSupportedError:
                assert time.monotonic() < deadline, "the library never saw the broker's hello"
                time.sleep(0.01)
        [member] = backend.room_members("game").result(TIMEOUT)
        assert (member.client_id, member.room_id, member.metadata, member.rooms) == (
            "a", "lobby", {"n": 1}, ["lobby", "game"])
        context = said(client, "one")
        assert (context.room_id, context.rooms) == ("lobby", ["lobby", "game"])
        assert backend.set_metadata("a", {"n": 2}).result(TIMEOUT) is True
        assert backend.leave_room("a", "lobby").result(TIMEOUT) is True
        context = said(client, "two")
        assert (context.metadata, context.rooms) == ({"n": 2}, ["game"])
        assert backend.join_room("ghost", "game").result(TIMEOUT) is False
        assert backend.disconnect_client("a", 4000, "bye").result(TIMEOUT) is True
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "bye")
        message, context = seen.get(timeout=TIMEOUT)
        assert (message, context.client_id, context.rooms) == ("gone", "a", ["game"])
        assert backend.room_members("game").result(TIMEOUT) == []
    finally:
        backend.disconnect(timeout=2)

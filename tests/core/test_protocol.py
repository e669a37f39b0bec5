"""BrokerProtocol and BrokerClientFactory against a fake broker on real TCP sockets.

What is logic (life cycle, retries, order, backpressure, idleness) is tested
deterministically in test_lifecycle.py and test_events.py; here, that the
real thing works over TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from pystrands import ConnectionRequestContext, Context
from pystrands.errors import NotConnectedError
from pystrands.lifecycle import ConnectionState
from tests.core.harness import Recorder, in_thread
from tests.support import transcript
from tests.support.ports import free_port

SEND_ACTIONS = {"response", "message_to_room", "message_to_connection", "broadcast"}


def frame(action: str, params: dict[str, Any], request_id: str = "rid") -> dict[str, Any]:
    return {"request_id": request_id, "action": action, "params": params}


def message(text: str, client_id: str = "c1", room_id: str = "lobby") -> dict[str, Any]:
    context = {"client_id": client_id, "room_id": room_id, "metadata": {"n": 1}}
    return frame("new_message", {"message": text, "context": context}, f"m-{client_id}-{text}")


def replay_pairs() -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each broker->backend frame of the transcript with the backend frames that answered it."""
    pairs: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for entry in transcript.entries():
        if "frame" not in entry:
            continue
        if entry["dir"].startswith("broker->"):
            pairs.append((entry["frame"], []))
        elif entry["frame"]["action"] in SEND_ACTIONS and pairs:
            pairs[-1][1].append(entry["frame"])
    return iter(pairs)


class TranscriptBackend(Recorder):
    """Answers as the backend of the recording did: ids and metadata from its responses."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.responses = {f["request_id"]: f["params"] for f in transcript.frames("backend", "response")}

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        super().on_connection_request(request)
        recorded = self.responses[self.current_request_id]
        request.context.client_id = recorded["client_id"]
        request.context.room_id = request.url.split("/")[2]
        request.context.metadata = recorded["metadata"]
        return recorded["accepted"]

    def on_message(self, message: str, context: Context) -> Deferred[Any]:
        super().on_message(message, context)
        return gatherResults([
            self.broker.send_room_message(context.room_id, f"room:{message}"),
            self.broker.send_private_message(context.client_id, f"private:{message}"),
            self.broker.broadcast_message(f"all:{message}"),
        ])


@pytest_twisted.ensureDeferred
async def test_replays_the_reference_transcript(make_harness: Any, reactor: Any) -> None:
    backend = TranscriptBackend(reactor)
    harness = make_harness(backend)
    conn = await harness.start()
    seen: dict[str, list[tuple[Any, ...]]] = {}
    for sent, answers in replay_pairs():
        backend.current_request_id = sent["request_id"]
        conn.send_frame(sent)
        if sent["action"] != "heartbeat":
            name, args = await backend.next_event()
            seen.setdefault(name, []).append(args)
        got = await in_thread(conn.recv_frames, len(answers))
        for expected, actual in zip(answers, got):
            assert actual["action"] == expected["action"]
            assert actual["params"] == expected["params"]
            if expected["action"] == "response":
                assert actual["request_id"] == expected["request_id"]
    await in_thread(conn.assert_silent, 0.2)

    requests = [args[0] for args in seen["on_connection_request"]]
    assert requests[0].url == "/ws/lobby/alice"
    assert requests[0].headers["X-Token"] == ["ok"]
    assert requests[0].remote_addr == "127.0.0.1:46092"
    assert requests[0].query == {}
    for name in ("on_new_connection", "on_disconnect"):
        for (context,) in seen[name]:
            assert context.metadata == {"user": "alice"}, "nested metadata must be unwrapped"
    messages = [(text, ctx.client_id, ctx.metadata) for text, ctx in seen["on_message"]]
    assert messages == [("hello", "client-alice", {"user": "alice"}),
                        ("bin", "client-alice", {"user": "alice"}),
                        ("while-no-backend", "client-dave", {"user": "alice"})]
    [(error, context)] = seen["on_error"]
    assert error == "no backend available to handle connection request"
    assert context.client_id is None and context.metadata["url"] == "/ws/lobby/erin"
    assert context.metadata["remote_addr"] == "127.0.0.1:46138"


@pytest_twisted.ensureDeferred
async def test_plain_metadata_form_and_query_param(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    conn.send_frame(frame("connection_request", {"headers": {}, "url": "/ws/x", "remote_addr": "1.2.3.4:5",
                                                 "query": {"token": ["t"]}}, "q1"))
    _, (request,) = await harness.backend.next_event()
    assert request.query == {"token": ["t"]}
    response = await in_thread(conn.recv_frame)
    assert response["request_id"] == "q1" and response["params"]["room_id"] == "/ws/x"
    assert response["params"]["accepted"] is True and response["params"]["metadata"] == {}
    conn.send_frame(frame("new_connection", {"context": {"client_id": "c", "room_id": "r", "metadata": {"a": 1}}}))
    _, (context,) = await harness.backend.next_event()
    assert context.metadata == {"a": 1}


BAD_LINES = [
    b"not json",
    b"{\"unterminated\": ",
    b"[1,2,3]",
    b"42",
    b"null",
    b"\xff\xfe\xfd",
    b'{"request_id":"r","params":{}}',
    b'{"request_id":"r","action":7,"params":{}}',
    b'{"request_id":"r","action":"new_message","params":[]}',
    b'{"request_id":5,"action":"new_message","params":{}}',
    b'{"request_id":"r","action":"no_such_action","params":{}}',
    b'{"request_id":"r","action":"new_message","params":{"message":5,"context":{}}}',
    b'{"request_id":"r","action":"new_message","params":{"message":null}}',
    b'{"request_id":"r","action":"new_connection","params":{"context":"oops"}}',
    b'{"request_id":"r","action":"disconnected","params":{"context":[1]}}',
    b'{"request_id":"r","action":"new_message","params":{"message":"m","context":{"client_id":{"a":1}}}}',
    b'{"request_id":"r","action":"new_connection","params":{"context":{"client_id":[1],"metadata":5}}}',
    b'{"request_id":"r","action":"error","params":{"error":{"x":1},"context":null}}',
    b'{"request_id":"r","action":"connection_request","params":{"headers":"h","url":5}}',
    b"   ",
    b"",
]


@pytest_twisted.ensureDeferred
async def test_malformed_frames_are_skipped_and_the_connection_stays(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    for number, bad in enumerate(BAD_LINES):
        conn.send_raw(bad + b"\n")
        conn.send_frame(message(f"good-{number}"))
        while True:
            name, args = await harness.backend.next_event()
            if name == "on_message" and args[0] == f"good-{number}":
                break
            if name == "on_connection_request":
                reply = await in_thread(conn.recv_frame)
                assert reply["params"]["accepted"] is False, "a request with a non-string url is rejected"
    assert harness.factory.connected
    assert not conn.closed.is_set()


@pytest_twisted.ensureDeferred
async def test_multi_mebibyte_frame_under_the_limit_arrives_whole(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    text = "é" * (512 * 1024) + "x" * (3 * 1024 * 1024)
    await in_thread(conn.send_frame, message(text))
    name, (received, _) = await harness.backend.next_event(timeout=20)
    assert received == text


@pytest_twisted.ensureDeferred
async def test_connection_request_outcomes(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    backend = harness.backend

    async def ask(answer: Any, request_id: str) -> dict[str, Any]:
        backend.answer = answer
        conn.send_frame(frame("connection_request", {"headers": {}, "url": "/ws/r", "remote_addr": "a"}, request_id))
        await backend.next_event()
        reply = await in_thread(conn.recv_frame)
        assert reply["request_id"] == request_id and reply["action"] == "response"
        return reply["params"]

    def boom(request: Any) -> bool:
        raise RuntimeError("handler bug")

    def refuse_by_attribute(request: Any) -> None:
        request.accepted = False

    def unencodable(request: Any) -> bool:
        request.context.metadata = {"when": object()}
        return True

    def bad_room(request: Any) -> bool:
        request.context.room_id = 42
        return True

    async def coroutine(request: Any) -> bool:
        request.context.metadata = {"via": "coroutine"}
        return True

    assert (await ask(lambda r: True, "a1"))["accepted"] is True
    assert (await ask(lambda r: False, "a2"))["accepted"] is False
    assert (await ask(lambda r: None, "a3"))["accepted"] is True
    assert (await ask(refuse_by_attribute, "a4"))["accepted"] is False
    assert (await ask(boom, "a5"))["accepted"] is False
    assert (await ask(unencodable, "a6"))["accepted"] is False
    assert (await ask(bad_room, "a7"))["accepted"] is False
    assert (await ask(coroutine, "a8"))["metadata"] == {"via": "coroutine"}
    params = await ask(lambda r: True, "a9")
    assert params["room_id"] == "/ws/r"
    assert len(params["client_id"]) == 36 and params["client_id"].count("-") == 4


@pytest_twisted.ensureDeferred
async def test_events_flow_while_an_answer_is_pending(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    pending: Deferred[bool] = Deferred()
    harness.backend.answer = lambda request: pending
    conn.send_frame(frame("connection_request", {"headers": {}, "url": "/ws/r", "remote_addr": "a"}, "slow"))
    await harness.backend.next_event()
    conn.send_frame(message("meanwhile", "other"))
    name, args = await harness.backend.next_event()
    assert (name, args[0]) == ("on_message", "meanwhile")
    pending.callback(True)
    reply = await in_thread(conn.recv_frame)
    assert reply["request_id"] == "slow" and reply["params"]["accepted"] is True


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_broker_closes(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    conn.close()
    again = await in_thread(harness.broker.accept, 5)
    again.send_frame(message("after-reconnect"))
    name, args = await harness.backend.next_event()
    assert args[0] == "after-reconnect"


@pytest_twisted.ensureDeferred
async def test_backend_started_before_the_broker_connects_when_it_appears(reactor: Any) -> None:
    from pystrands.protocol import BrokerClientFactory
    from pystrands.settings import BackendSettings
    from tests.core.harness import FAST
    from tests.support.fakebroker import FakeBroker
    from twisted.internet.endpoints import TCP4ClientEndpoint

    port = free_port()
    backend = Recorder(reactor)
    factory = BrokerClientFactory(backend, reactor, BackendSettings(**FAST))
    attempt = factory.next_attempt()
    factory.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2))
    assert await attempt is False
    assert factory.state is ConnectionState.WAITING_TO_RETRY
    with FakeBroker(port) as broker:
        conn = await in_thread(broker.accept, 5)
        conn.send_frame(message("late-broker"))
        assert (await backend.next_event())[1][0] == "late-broker"
        await factory.stop(1)


@pytest_twisted.ensureDeferred
async def test_no_reconnect_means_one_attempt(reactor: Any) -> None:
    from pystrands.protocol import BrokerClientFactory
    from pystrands.settings import BackendSettings
    from twisted.internet.endpoints import TCP4ClientEndpoint

    factory = BrokerClientFactory(Recorder(reactor), reactor, BackendSettings(auto_reconnect=False))
    attempt = factory.next_attempt()
    factory.connect(TCP4ClientEndpoint(reactor, "127.0.0.1", free_port(), timeout=2))
    assert await attempt is False
    assert factory.state is ConnectionState.STOPPED and not factory.retrying, "no retry scheduled"
    with pytest.raises(NotConnectedError, match="auto_reconnect is off"):
        await factory.broadcast_message("x")


@pytest_twisted.ensureDeferred
async def test_send_argument_errors_fail_the_deferred(make_harness: Any) -> None:
    harness = make_harness()
    conn = await harness.start()
    factory = harness.factory
    with pytest.raises(TypeError, match="message must be a str"):
        await factory.send_room_message("lobby", 5)
    with pytest.raises(TypeError, match="room_id must be a str"):
        await factory.send_room_message(None, "m")
    with pytest.raises(TypeError, match="client_id must be a str"):
        await factory.send_private_message(b"c", "m")
    with pytest.raises(TypeError, match="message must be a str"):
        await factory.broadcast_message({"not": "str"})
    await in_thread(conn.assert_silent, 0.2)


@pytest_twisted.ensureDeferred
async def test_token_is_sent_in_an_auth_frame_first(make_harness: Any) -> None:
    harness = make_harness(backend_token="s3cret")
    conn = await harness.start()
    first = await in_thread(conn.recv_frame)
    assert first["action"] == "auth" and first["params"] == {"token": "s3cret"}

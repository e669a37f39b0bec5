"""The ten scenarios of the reference broker's transcript, played against the embedded broker.

Real WebSocket clients (``websockets``) and a raw TCP backend. Frames the
backend receives must have the transcript's actions and keys; clients must
receive the transcript's texts. Each deliberate difference is asserted
against the transcript too: ``query`` added to ``connection_request``,
plain ``context.metadata``, HTTP 403 for a rejection, HTTP 503 without a
backend.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from pystrands import wire
from tests.support import transcript

from .conftest import TIMEOUT, RunningBroker, respond

SCENARIOS = [entries for _, entries in transcript.scenarios()]


def recorded(number: int, direction: str) -> list[dict[str, Any]]:
    """Frames (or texts) of scenario ``number`` whose direction starts with ``direction``."""
    return [entry.get("frame", entry.get("text")) for entry in SCENARIOS[number - 1]
            if entry["dir"].startswith(direction)]


def shape(frame: dict[str, Any]) -> tuple[Any, ...]:
    """What must match the reference: the action, the params keys, the context keys."""
    params = frame["params"]
    context = params.get("context")
    return frame["action"], sorted(params), sorted(context) if isinstance(context, dict) else None


def assert_like(received: dict[str, Any], reference: dict[str, Any]) -> None:
    """Same shape as the reference frame; a client context's metadata is the plain object.

    Deliberate extension: a client context also lists the client's ``rooms`` (docs/PROTOCOL-EXTENSIONS.md).
    """
    received_context = received["params"].get("context")
    if isinstance(received_context, dict) and "client_id" in received_context:
        assert received_context["rooms"] == [received_context["room_id"]]
        received = dict(received, params=dict(received["params"], context={
            key: value for key, value in received_context.items() if key != "rooms"}))
    assert shape(received) == shape(reference)
    assert isinstance(received["request_id"], str) and received["request_id"]
    context = reference["params"].get("context")
    if isinstance(context, dict) and "metadata" in context:
        # Deliberate difference: the reference nests the whole response params here.
        assert set(context["metadata"]) == {"accepted", "client_id", "room_id", "metadata"}
        assert received["params"]["context"]["metadata"] == wire.unwrap_metadata(context["metadata"])
        for key in ("client_id", "room_id"):
            assert received["params"]["context"][key] == context[key]


def assert_like_request(received: dict[str, Any], reference: dict[str, Any]) -> None:
    """A connection_request: the reference's keys plus the deliberate ``query``."""
    assert received["action"] == reference["action"] == "connection_request"
    assert sorted(received["params"]) == sorted([*reference["params"], "query"])
    assert sorted(received["params"]["headers"]) == sorted(reference["params"]["headers"])
    assert received["params"]["url"] == reference["params"]["url"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", received["params"]["remote_addr"])


def send_recorded(backend: Any, number: int, sender: str = "backend->") -> None:
    """Send, verbatim, the frames the backend sent in scenario ``number``."""
    for frame in recorded(number, sender):
        backend.send_frame(frame)


def receive_texts(client: ClientConnection, count: int) -> list[str]:
    return [client.recv(timeout=TIMEOUT) for _ in range(count)]


def connect_alice(broker: RunningBroker, backend: Any) -> ClientConnection:
    """Scenario 1's client: lobby, client-alice, metadata {"user": "alice"}."""
    return broker.accept(backend, "/ws/lobby/alice?token=t", "client-alice", "lobby", {"user": "alice"},
                         additional_headers={"X-Token": "ok"})


def test_1_accepted_connection(broker: RunningBroker) -> None:
    request_ref, response_ref, new_connection_ref = recorded(1, "broker->backend")[0], \
        recorded(1, "backend->")[0], recorded(1, "broker->backend")[1]
    assert recorded(1, "ws alice") == ["handshake: 101 Switching Protocols"]
    backend = broker.backend()
    opening = broker.open("/ws/lobby/alice?token=t", additional_headers={"X-Token": "ok"})
    request = backend.recv_frame()
    assert_like_request(request, request_ref)
    assert request["params"]["headers"]["X-Token"] == ["ok"]
    # Deliberate difference: the query string reaches the backend (the url still has none).
    assert "query" not in request_ref["params"]
    assert request["params"]["query"] == {"token": ["t"]}
    backend.send_frame(dict(response_ref, request_id=request["request_id"]))
    client = opening.result(TIMEOUT)
    assert client.response.status_code == 101
    new_connection = backend.recv_frame()
    assert_like(new_connection, new_connection_ref)
    assert new_connection["params"]["context"] == {
        "client_id": "client-alice", "room_id": "lobby", "metadata": {"user": "alice"}, "rooms": ["lobby"]}


@pytest.mark.parametrize("number, payload", [(2, "hello"), (3, b"bin")])
def test_2_3_text_and_binary_messages(broker: RunningBroker, number: int, payload: str | bytes) -> None:
    backend = broker.backend()
    alice = connect_alice(broker, backend)
    alice.send(payload)
    event = backend.recv_frame()
    reference = recorded(number, "broker->backend")[0]
    assert_like(event, reference)
    assert event["params"]["message"] == reference["params"]["message"]
    send_recorded(backend, number)
    assert receive_texts(alice, 3) == recorded(number, "broker->ws alice")


def test_4_rejected_connection_is_http_403(broker: RunningBroker) -> None:
    # Deliberate difference: the reference upgrades, then drops the socket.
    assert recorded(4, "ws bob") == ["handshake: 101 Switching Protocols",
                                     "then: ConnectionClosedError: no close frame received or sent"]
    backend = broker.backend()
    opening = broker.open("/ws/lobby/bob", additional_headers={"X-Token": "bad"})
    request = backend.recv_frame()
    assert_like_request(request, recorded(4, "broker->backend")[0])
    backend.send_frame(dict(recorded(4, "backend->")[0], request_id=request["request_id"]))
    with pytest.raises(InvalidStatus) as refused:
        opening.result(TIMEOUT)
    assert refused.value.response.status_code == 403
    backend.assert_silent(0.2)  # no new_connection
    assert broker.thread.call(lambda: len(broker.broker.rooms)) == 0


def test_5_close_gives_disconnected(broker: RunningBroker) -> None:
    backend = broker.backend()
    alice = connect_alice(broker, backend)
    alice.close()
    assert_like(backend.recv_frame(), recorded(5, "broker->backend")[0])


def test_6_path_outside_ws_is_404(broker: RunningBroker) -> None:
    assert recorded(6, "ws carol /chat") == [
        "handshake failed: server rejected WebSocket connection: HTTP 404"]
    backend = broker.backend()
    with pytest.raises(InvalidStatus) as refused:
        broker.open("/chat").result(TIMEOUT)
    assert refused.value.response.status_code == 404
    backend.assert_silent(0.2)


def test_7_unusable_lines_are_skipped(broker: RunningBroker) -> None:
    backend = broker.backend()
    alice = connect_alice(broker, backend)
    not_json, unknown = recorded(7, "backend->")
    backend.send_raw(not_json.encode() + b"\n")
    backend.send_frame(unknown)
    backend.send_frame({"request_id": "b", "action": "broadcast", "params": {"message": "still here"}})
    assert alice.recv(timeout=TIMEOUT) == "still here"
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 1


def two_clients_then_backend_stops(broker: RunningBroker) -> tuple[ClientConnection, ClientConnection]:
    """Scenario 8: carol and dave join the lobby; the backend then goes away."""
    references = recorded(8, "broker->backend")
    backend = broker.backend()
    clients = []
    for name, (request_ref, new_connection_ref) in zip(("carol", "dave"),
                                                        (references[0:2], references[2:4])):
        opening = broker.open(f"/ws/lobby/{name}")
        request = backend.recv_frame()
        assert_like_request(request, request_ref)
        backend.send_frame(respond(request, f"client-{name}", "lobby", {"user": "alice"}))
        clients.append(opening.result(TIMEOUT))
        assert_like(backend.recv_frame(), new_connection_ref)
    backend.close()
    broker.thread.wait_for(lambda: not broker.broker.backends, "the backend to be gone")
    return clients[0], clients[1]


def test_8_clients_stay_when_the_backend_stops(broker: RunningBroker) -> None:
    carol, dave = two_clients_then_backend_stops(broker)
    for client in (carol, dave):
        assert client.ping().wait(TIMEOUT)


def events_while_no_backend(broker: RunningBroker, carol: ClientConnection,
                            dave: ClientConnection) -> None:
    """Scenario 9: carol leaves, dave speaks, erin's handshake fails (HTTP 503 here)."""
    carol.close()
    broker.thread.wait_for(lambda: len(broker.broker.queue) == 1, "carol's disconnect to be queued")
    dave.send("while-no-backend")
    broker.thread.wait_for(lambda: len(broker.broker.queue) == 2, "dave's message to be queued")
    with pytest.raises(InvalidStatus) as refused:
        broker.open("/ws/lobby/erin").result(TIMEOUT)
    # Deliberate difference: the reference answers an empty HTTP 200.
    assert recorded(9, "ws erin") == ["handshake failed: server rejected WebSocket connection: HTTP 200"]
    assert refused.value.response.status_code == 503
    assert broker.thread.call(lambda: len(broker.broker.queue)) == 3


def test_9_no_backend_queues_and_refuses_with_503(broker: RunningBroker) -> None:
    carol, dave = two_clients_then_backend_stops(broker)
    events_while_no_backend(broker, carol, dave)


def test_10_queued_events_flush_oldest_first(broker: RunningBroker) -> None:
    carol, dave = two_clients_then_backend_stops(broker)
    events_while_no_backend(broker, carol, dave)
    references = recorded(10, "broker->backend2")
    backend2 = broker.backend()
    flushed = backend2.recv_frames(3)
    expected = [references[0], references[1], references[2]]
    assert [frame["action"] for frame in flushed] == ["disconnected", "new_message", "error"]
    for frame, reference in zip(flushed, expected):
        assert_like(frame, reference)
    assert flushed[1]["params"]["message"] == "while-no-backend"
    assert flushed[2]["params"]["error"] == references[2]["params"]["error"]
    assert flushed[2]["params"]["context"]["url"] == "/ws/lobby/erin"
    send_recorded(backend2, 10, "backend2->")
    assert receive_texts(dave, 3) == recorded(10, "broker->ws dave")
    dave.close()
    assert_like(backend2.recv_frame(), references[3])

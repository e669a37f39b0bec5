"""No backend input crashes or stalls the broker; the token gate; the loopback default; heartbeats."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from .conftest import TIMEOUT, RunningBroker, respond

BAD_FRAMES = {
    "non-string message to a room": {"action": "message_to_room", "params": {"room_id": "lobby", "message": 5}},
    "null broadcast message": {"action": "broadcast", "params": {"message": None}},
    "object private message": {"action": "message_to_connection", "params": {"conn_id": "a", "message": {}}},
    "missing room_id": {"action": "message_to_room", "params": {"message": "x"}},
    "mistyped room_id": {"action": "message_to_room", "params": {"room_id": 7, "message": "x"}},
    "missing conn_id": {"action": "message_to_connection", "params": {"message": "x"}},
    "mistyped conn_id": {"action": "message_to_connection", "params": {"conn_id": ["a"], "message": "x"}},
    "unknown request_id": {"action": "response", "params": {"accepted": True, "client_id": "z",
                                                             "room_id": "lobby", "metadata": {}}},
    "params not an object": {"action": "broadcast", "params": "x"},
    "action not a string": {"action": 3, "params": {}},
}
BAD_LINES = {name: json.dumps(dict(frame, request_id="bad")).encode() for name, frame in BAD_FRAMES.items()}
BAD_LINES.update({
    "invalid JSON": b"{not json",
    "a JSON array": b"[1, 2]",
    "invalid UTF-8": b'{"action": "broadcast", "params": {"message": "\xff"}}',
})


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_bad_backend_line_is_logged_and_skipped(broker: RunningBroker, broker_warnings: list[str],
                                                name: str) -> None:
    backend = broker.backend()
    alice = broker.accept(backend, "/ws/lobby/a", "a")
    bob = broker.accept(backend, "/ws/lobby/b", "b")
    backend.send_raw(BAD_LINES[name] + b"\n")
    backend.send_frame({"request_id": "ok", "action": "broadcast", "params": {"message": "fine"}})
    assert alice.recv(timeout=TIMEOUT) == "fine"
    assert bob.recv(timeout=TIMEOUT) == "fine"
    assert len(broker_warnings) == 1, broker_warnings
    assert "Skipped" in broker_warnings[0]
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 1


def test_response_with_mistyped_ids_rejects_at_once(broker: RunningBroker, broker_warnings: list[str]) -> None:
    backend = broker.backend()
    opening = broker.open("/ws/lobby/x")
    request = backend.recv_frame()
    backend.send_frame(respond(request, 42, "lobby", {}))  # type: ignore[arg-type]
    with pytest.raises(InvalidStatus) as refused:
        opening.result(TIMEOUT)
    assert refused.value.response.status_code == 403
    assert any("client_id" in line for line in broker_warnings)


def test_oversized_line_is_skipped_in_pieces(start_broker: Any, broker_warnings: list[str]) -> None:
    broker = start_broker(max_frame_size=1024)
    backend = broker.backend()
    alice = broker.accept(backend, "/ws/lobby/a", "a")
    huge = json.dumps({"request_id": "x", "action": "broadcast", "params": {"message": "y" * 5000}})
    for start in range(0, len(huge), 700):
        backend.send_raw(huge[start:start + 700].encode())
    backend.send_raw(b"\n")
    backend.send_frame({"request_id": "ok", "action": "broadcast", "params": {"message": "fine"}})
    assert alice.recv(timeout=TIMEOUT) == "fine"
    assert any("longer than 1024 bytes" in line for line in broker_warnings)


def test_a_multi_mib_line_is_framed_in_linear_time(broker: RunningBroker) -> None:
    backend = broker.backend()
    alice = broker.accept(backend, "/ws/lobby/a", "a", max_size=None)
    message = "z" * (8 * 1024 * 1024)
    line = json.dumps({"request_id": "x", "action": "broadcast", "params": {"message": message}}).encode()
    backend.send_raw(line + b"\n")
    assert alice.recv(timeout=TIMEOUT) == message


# -- the backend token -------------------------------------------------------


def test_backend_with_the_token_is_served(start_broker: Any) -> None:
    broker = start_broker(backend_token="s3cret")
    backend = broker.backend(token="s3cret")
    broker.accept(backend, "/ws/lobby/a", "a")


@pytest.mark.parametrize(("first", "why"), [
    ({"request_id": "1", "action": "auth", "params": {"token": "guess-1"}}, "wrong backend token"),
    ({"request_id": "1", "action": "auth", "params": {"token": 5}}, "wrong backend token"),
    ({"request_id": "1", "action": "broadcast", "params": {"message": "no auth"}},
     "its first frame is 'broadcast', not the auth frame this broker's --backend-token asks for"),
    ("not json", "its first frame is not a frame"),
])
def test_backend_without_the_right_first_frame_is_dropped_unserved(
        start_broker: Any, broker_warnings: list[str], first: Any, why: str) -> None:
    broker = start_broker(backend_token="s3cret", heartbeat_interval=0.05)
    backend = broker.backend(ready=False)
    if isinstance(first, str):
        backend.send_raw(first.encode() + b"\n")
    else:
        backend.send_frame(first)
    backend.wait_closed()
    with pytest.raises(AssertionError, match="closed"):
        backend.recv_line(0.1)  # it received nothing at all, not even a heartbeat
    assert any("Dropped backend" in line and why in line for line in broker_warnings), broker_warnings
    assert not any("guess-1" in line or "s3cret" in line for line in broker_warnings)  # no token is ever logged


def test_silent_backend_is_dropped_after_the_auth_timeout(start_broker: Any) -> None:
    broker = start_broker(backend_token="s3cret", auth_timeout=0.2)
    backend = broker.backend(ready=False)
    backend.wait_closed()
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 0


def test_auth_frame_without_a_configured_token_is_ignored(broker: RunningBroker) -> None:
    backend = broker.backend(token="anything")
    broker.accept(backend, "/ws/lobby/a", "a")


def test_backend_port_is_loopback_by_default(broker: RunningBroker) -> None:
    assert broker.service.tcp_address.host == "127.0.0.1"
    assert broker.service.ws_address.host == "0.0.0.0"


def test_backend_port_opens_wider_on_request(start_broker: Any) -> None:
    broker = start_broker(tcp_interface="0.0.0.0")
    assert broker.service.tcp_address.host == "0.0.0.0"
    with socket.create_connection(("127.0.0.1", broker.tcp_port), timeout=TIMEOUT):
        pass


def test_heartbeats_reach_every_backend(start_broker: Any) -> None:
    broker = start_broker(heartbeat_interval=0.05)
    backends = [broker.backend(), broker.backend()]
    for backend in backends:
        assert backend.recv_frame() == {"request_id": "heartbeat", "action": "heartbeat", "params": {}}

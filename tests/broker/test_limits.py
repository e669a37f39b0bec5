"""Limits with clear outcomes (message size 1009, max clients 503), bounded memory, graceful stop."""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import TIMEOUT, RunningBroker, respond


@pytest.mark.parametrize("payload", [
    "x" * 1001,
    b"\x00" * 1001,
    ["x" * 600, "x" * 600],  # fragmented: each part fits, the message does not
])
def test_message_over_the_limit_closes_with_1009(start_broker: Any, payload: Any) -> None:
    broker = start_broker(max_message_size=1000)
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    client.send("x" * 1000)
    assert backend.recv_frame()["params"]["message"] == "x" * 1000
    with pytest.raises(ConnectionClosed) as closed:
        client.send(payload)  # a fragmented message may be refused before its last part is sent
        client.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert backend.recv_frame()["action"] == "disconnected"  # the big message never reached it


def test_clients_beyond_max_clients_get_503(start_broker: Any) -> None:
    broker = start_broker(max_clients=2)
    backend = broker.backend()
    broker.accept(backend, "/ws/lobby/a", "a")
    broker.accept(backend, "/ws/lobby/b", "b")
    with pytest.raises(InvalidStatus) as refused:
        broker.open("/ws/lobby/c").result(TIMEOUT)
    assert refused.value.response.status_code == 503
    backend.assert_silent(0.1)


def raw_client(broker: RunningBroker, backend: Any, client_id: str) -> socket.socket:
    """A WebSocket client on a bare socket with a tiny receive buffer, that never reads after the handshake."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", broker.ws_port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/lobby/{client_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    backend.send_frame(respond(backend.recv_frame(), client_id, "lobby", {}))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert backend.recv_frame()["action"] == "new_connection"
    return sock


def test_a_client_that_does_not_read_is_dropped(start_broker: Any, broker_warnings: list[str]) -> None:
    broker = start_broker(max_client_buffer=256 * 1024)
    backend = broker.backend()
    sleeper = raw_client(broker, backend, "sleeper")
    reader = broker.accept(backend, "/ws/lobby/reader", "reader")
    flood = {"request_id": "r", "action": "message_to_connection",
             "params": {"conn_id": "sleeper", "message": "m" * 65536}}
    for _ in range(160):  # 10 MiB: more than the kernel buffers and the bound together
        backend.send_frame(flood)
    gone = backend.recv_frame(TIMEOUT)
    assert gone["action"] == "disconnected" and gone["params"]["context"]["client_id"] == "sleeper"
    assert any("sleeper" in line and "wait to be written" in line for line in broker_warnings)
    backend.send_frame({"request_id": "r", "action": "broadcast", "params": {"message": "after"}})
    assert reader.recv(timeout=TIMEOUT) == "after"
    sleeper.close()


def slow_backend(broker: RunningBroker) -> tuple[socket.socket, Any]:
    """A backend that accepts one client, then never reads again; returns (its socket, the client)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", broker.tcp_port))
    broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the backend to register")
    opening = broker.open("/ws/lobby/a")
    request = {"action": "hello"}
    while request["action"] == "hello":  # the broker's greeting comes first
        line = b""
        while not line.endswith(b"\n"):
            line += sock.recv(1)
        request = json.loads(line)
    sock.sendall(json.dumps(respond(request, "a", "lobby", {})).encode() + b"\n")
    return sock, opening.result(TIMEOUT)


def test_a_backend_that_does_not_read_is_dropped_when_it_makes_no_progress(
        start_broker: Any, broker_warnings: list[str]) -> None:
    broker = start_broker(write_timeout=0.3)
    sock, client = slow_backend(broker)
    for _ in range(100):  # 6 MiB of new_message frames
        client.send("n" * 60000)
    broker.thread.wait_for(lambda: not broker.broker.backends, "the slow backend to be dropped")
    assert any("Dropped backend" in line and "made no progress for 0.3s" in line for line in broker_warnings)
    client.send("queued")
    broker.thread.wait_for(lambda: len(broker.broker.queue) >= 1, "later events to be queued")
    sock.close()


def test_a_congested_backend_holds_its_clients_back_instead_of_being_dropped(
        start_broker: Any, broker_warnings: list[str]) -> None:
    """While the backend does not read, the broker stops reading its client; nothing is lost or dropped."""
    broker = start_broker(max_backend_buffer=1024 * 1024, write_timeout=30.0)
    sock, client = slow_backend(broker)
    sent = [f"{number:04d}" + "n" * 60000 for number in range(400)]  # 24 MiB: past every kernel buffer
    sending = broker._pool.submit(lambda: [client.send(message) for message in sent])
    backend = broker.thread.call(lambda: broker.broker.backends[0])
    broker.thread.wait_for(lambda: backend.congested, "the backend's socket to fill")
    held = [broker.thread.call(lambda: backend._outbox.held_bytes) for _ in range(20)]
    assert max(held) < 256 * 1024, "the client kept being read while its backend was congested"
    assert not sending.done(), "the client could send everything: no backpressure reached it"
    sock.settimeout(TIMEOUT)
    reader = sock.makefile("rb")
    received: list[str] = []
    while len(received) < len(sent):
        event = json.loads(reader.readline())
        if event["action"] == "new_message":  # heartbeats come in between
            received.append(event["params"]["message"])
    assert received == sent
    sending.result(TIMEOUT)
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 1
    assert not any("Dropped" in line for line in broker_warnings)
    sock.close()


def test_stop_closes_clients_with_1001_then_backends_after_their_events(broker: RunningBroker) -> None:
    backend = broker.backend()
    clients = [broker.accept(backend, f"/ws/lobby/{name}", name) for name in ("a", "b")]
    broker.thread.call(broker.service.stopService)
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    events = backend.recv_frames(2)
    assert sorted(event["params"]["context"]["client_id"] for event in events) == ["a", "b"]
    assert {event["action"] for event in events} == {"disconnected"}
    backend.wait_closed()


def test_a_client_closing_while_its_buffer_is_full_is_disconnected(broker: RunningBroker) -> None:
    backend = broker.backend()
    alice = broker.accept(backend, "/ws/lobby/a", "a")  # its max_size is 1 MiB: it will close with 1009
    message = "z" * (2 * 1024 * 1024)
    backend.send_frame({"request_id": "x", "action": "broadcast", "params": {"message": message}})
    with pytest.raises(ConnectionClosed) as closed:
        alice.recv(timeout=TIMEOUT)
    assert closed.value.sent is not None and closed.value.sent.code == 1009
    assert backend.recv_frame()["action"] == "disconnected"


def test_a_client_whose_socket_stays_full_is_dropped_after_the_write_timeout(
        start_broker: Any, broker_warnings: list[str]) -> None:
    """It is not read from meanwhile (its close frame waits too), and the others are served."""
    broker = start_broker(client_write_timeout=0.5, max_client_buffer=64 * 1024 * 1024)
    backend = broker.backend()
    sleeper = raw_client(broker, backend, "sleeper")
    other = broker.accept(backend, "/ws/lobby/other", "other")
    for _ in range(16):  # 16 MiB: more than the kernel buffers, so the socket stays full
        backend.send_frame({"request_id": "r", "action": "message_to_connection",
                            "params": {"conn_id": "sleeper", "message": "m" * 1024 * 1024}})
    mask = os.urandom(4)
    sleeper.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8")))
    backend.send_frame({"request_id": "r", "action": "broadcast", "params": {"message": "after"}})
    assert other.recv(timeout=TIMEOUT) == "after"
    gone = backend.recv_frame(TIMEOUT)
    assert gone["action"] == "disconnected" and gone["params"]["context"]["client_id"] == "sleeper"
    assert any("sleeper" in line and "made no progress for 0.5s" in line for line in broker_warnings)
    assert broker.thread.call(lambda: len(broker.broker.backends)) == 1
    sleeper.close()



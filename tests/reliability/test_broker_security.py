"""Security of the embedded broker as deployed: its listening addresses, backend tokens, limits, floods.

The broker runs as ``python -m pystrands server`` with command-line flags,
as a user would start it; the peers are raw sockets and WebSocket clients
on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.reliability.support import (
    AutoBackend, Launch, OpenWs, count, open_when_served, raw_backend, receive_text, rss_kib, start_broker,
    upgrade_request,
)

TOKEN = "s3cret-token"


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses (hex, as /proc/net shows them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_backend_port_listens_on_loopback_only_by_default(launch: Launch) -> None:
    broker = start_broker(launch)
    assert listening_addresses(broker.tcp_port) == {"0100007F"}, "127.0.0.1 only"
    assert listening_addresses(broker.ws_port) == {"00000000"}, "the WebSocket port is for everyone"


def test_a_backend_without_the_right_token_is_dropped_before_any_frame(launch: Launch, open_ws: OpenWs) -> None:
    """Events wait in the queue; backends with a wrong, empty or missing token get none of them, nor anything."""
    broker = start_broker(launch, "--backend-token", TOKEN, "--auth-timeout", "1")
    for _ in range(3):  # refused handshakes queue an error event each, with the request's headers
        with pytest.raises(InvalidStatus):
            open_ws(f"{broker.ws_url}/lobby")
    intruders = [raw_backend(broker.tcp_port, "wrong"), raw_backend(broker.tcp_port, ""),
                 raw_backend(broker.tcp_port)]  # the last sends nothing: dropped at --auth-timeout
    impostor = raw_backend(broker.tcp_port)
    impostor.send_frame({"request_id": "x", "action": "broadcast", "params": {"message": "hi"}})
    for intruder in [*intruders, impostor]:
        intruder.wait_closed(5.0)
        assert intruder.lines.get_nowait() is None, "a frame reached a backend that never authenticated"
    assert count(broker.child, "Dropped backend") == 4

    trusted = AutoBackend(broker.tcp_port, TOKEN)
    assert trusted.next_event()["action"] == "error", "the queued events were there to leak"


def test_message_size_and_client_limits_hold(launch: Launch, open_ws: OpenWs) -> None:
    """Over --max-message-size: close 1009 and nothing forwarded; over --max-clients: HTTP 503."""
    broker = start_broker(launch, "--max-message-size", "1024", "--max-clients", "3")
    backend = AutoBackend(broker.tcp_port)
    big, small, watcher = (open_when_served(open_ws, f"{broker.ws_url}/room") for _ in range(3))
    with pytest.raises(InvalidStatus) as refused:
        open_ws(f"{broker.ws_url}/room")
    assert refused.value.response.status_code == 503

    big.send("x" * 1025)
    with pytest.raises(ConnectionClosed) as closed:
        big.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    small.send("y" * 1024)
    event = backend.wait_for(lambda event: event["action"] in ("new_message", "disconnected")
                             and event["params"]["context"]["client_id"] == "client-0")
    assert event["action"] == "disconnected", "the oversized message was forwarded"
    message = backend.wait_for(lambda event: event["action"] == "new_message")
    assert message["params"]["message"] == "y" * 1024

    backend.send({"request_id": "r", "action": "message_to_room", "params": {"room_id": "room", "message": "still"}})
    receive_text(watcher, lambda text: text == "still")
    open_when_served(open_ws, f"{broker.ws_url}/room")  # the closed client's slot is free again


HALF_OPEN = 300
RAPID = 300


def test_a_handshake_flood_does_not_stop_established_clients(launch: Launch, open_ws: OpenWs) -> None:
    """HALF_OPEN half-sent handshakes held open and RAPID connect/close handshakes; the chat goes on."""
    broker = start_broker(launch)
    backend = AutoBackend(broker.tcp_port)
    watcher = open_when_served(open_ws, f"{broker.ws_url}/room")
    before = rss_kib(broker.child.process.pid)

    def still_served(token: str) -> float:
        """Seconds for a room message to reach the established client."""
        started = time.monotonic()
        backend.send({"request_id": token, "action": "message_to_room", "params": {"room_id": "room", "message": token}})
        receive_text(watcher, lambda text: text == token, timeout=5)
        return time.monotonic() - started

    half_open = []
    try:
        for index in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5)
            sock.sendall(upgrade_request(f"/ws/flood-{index}")[:40])
            half_open.append(sock)
        latencies = [still_served("after-half-open")]
        for index in range(RAPID):
            with socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5) as sock:
                sock.sendall(upgrade_request(f"/ws/flood-{index}"))
        latencies.append(still_served("after-rapid"))
        assert max(latencies) < 1.0
        open_when_served(open_ws, f"{broker.ws_url}/room")  # a newcomer still gets in
        assert broker.child.process.poll() is None
    finally:
        for sock in half_open:
            sock.close()
    growth = rss_kib(broker.child.process.pid) - before
    print(f"\nhandshake flood: room messages took {', '.join(f'{s * 1000:.1f} ms' for s in latencies)};"
          f" broker RSS +{growth / 1024:.1f} MiB")
    assert growth < 30 * 1024, f"the broker grew by {growth} KiB during the flood"

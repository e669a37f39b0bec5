"""``python -m examples.chat`` (``make demo``) starting: "ready" means ready, a taken port is one clear line."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from tests.demo.support import Launch, free_port


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port something else listens on (on 127.0.0.1, which the broker's any-address listening needs too)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


@pytest.mark.parametrize("side, variable", [("--ws-port", "PYSTRAND_WS_PORT"), ("--tcp-port", "PYSTRAND_TCP_PORT")])
def test_a_taken_port_is_one_clear_line_and_a_failing_status(launch: Launch, occupied: int, side: str,
                                                             variable: str) -> None:
    ports = {"--ws-port": free_port(), "--tcp-port": free_port(), side: occupied}
    child = launch(["-m", "examples.chat", *(str(item) for pair in ports.items() for item in pair)], name="chat")
    assert child.process.wait(30) == 1
    lines = [line for line in child.output().splitlines() if line.strip()]
    assert len(lines) == 1, child.output()
    assert f"Port {occupied} " in lines[0] and "is in use" in lines[0]
    assert f"{variable}=" in lines[0] and "make demo" in lines[0]
    assert "ready" not in child.output()


def test_ready_means_both_ports_listen_and_the_backend_is_connected(launch: Launch) -> None:
    ws_port, tcp_port = free_port(), free_port()
    child = launch(["-m", "examples.chat", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port)], name="chat")
    child.wait_for_output("Chat demo ready")
    # No retry: a broker without its backend would answer this handshake 503.
    with connect(f"ws://127.0.0.1:{ws_port}/ws/lobby?name=first", open_timeout=5) as ws:
        assert '"welcome"' in ws.recv(timeout=5)
    socket.create_connection(("127.0.0.1", tcp_port), timeout=2).close()
    output = child.output()
    assert output.index("PyStrands broker: WebSocket on") < output.index("Chat demo ready")
    assert child.interrupt() == 0
    assert "Traceback" not in child.output()

"""examples/fastapi_app.py under uvicorn in a subprocess, with a real HTTP request."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.faces.conftest import accept_client, event, nested_context
from tests.support.fakebroker import FakeBroker
from tests.support.ports import free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = pathlib.Path(__file__).resolve().parents[2]



def test_an_http_request_sends_to_a_room_and_the_backend_echoes(broker: FakeBroker) -> None:
    http_port = free_port()
    env = {**os.environ, "PYSTRANDS_BROKER_HOST": "localhost", "PYSTRANDS_BROKER_PORT": str(broker.port)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1",
         "--port", str(http_port), "--lifespan", "on"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn = broker.accept(timeout=20)
        assert accept_client(conn, url="/ws/chat/lobby")["room_id"] == "lobby"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(f"http://127.0.0.1:{http_port}/rooms/lobby",
                                      content="hello everyone", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        assert response.status_code == 200 and response.json() == {"room": "lobby", "sent": "hello everyone"}
        assert conn.recv_frame()["params"] == {"room_id": "lobby", "message": "hello everyone"}
        conn.send_frame(event("new_message", nested_context("c1", "lobby", {}), message="hi"))
        assert conn.recv_frame()["params"] == {"room_id": "lobby", "message": "echo: hi"}
        broker.close()  # no broker any more: the backend retries, and a send through the app is refused
        while (refused := httpx.post(f"http://127.0.0.1:{http_port}/rooms/lobby", content="x", timeout=5)) \
                .status_code == 200:
            assert time.monotonic() < deadline + 20, "the app kept answering 200 with no broker"
            time.sleep(0.05)
        assert refused.status_code == 503 and refused.json() == {"detail": "not connected to the PyStrands broker"}
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output
    assert "Traceback" not in output, output

"""Fixtures of the demo tests: child processes that are always stopped, and a broker."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from websockets.sync.client import connect

from tests.demo.support import Broker, Child, Launch, OpenWs, free_port, start_broker


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(args, name=..., env=None) -> Child: ``python *args``, stopped after the test if still running."""
    started: list[Child] = []

    def start(args: list[str], name: str, env: dict[str, str] | None = None) -> Child:
        child = Child(args, tmp_path / f"{name}.log", env)
        started.append(child)
        return child

    yield start
    for child in reversed(started):
        if child.process.poll() is None:
            child.process.terminate()  # lets the child stop what it started itself
            try:
                child.process.wait(10.0)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5.0)


@pytest.fixture
def broker(launch: Launch) -> Broker:
    """An embedded broker on free ports, without static files."""
    return start_broker(launch)


@pytest.fixture
def open_ws() -> Iterator[OpenWs]:
    """open_ws(url) -> a WebSocket client connection, closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda url: stack.enter_context(connect(url, open_timeout=5))


@pytest.fixture
def demo(launch: Launch) -> tuple[Child, str, int]:
    """``python -m examples.chat`` on free ports, ready: (process, WebSocket base URL, page port)."""
    ws_port, tcp_port = free_port(), free_port()
    child = launch(["-m", "examples.chat", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port)], name="chat")
    child.wait_for_output("Chat demo ready")
    return child, f"ws://127.0.0.1:{ws_port}/ws", ws_port

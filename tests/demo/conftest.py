"""Fixtures of the demo tests: child processes that are always stopped, and a broker."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest
from websockets.sync.client import connect

from tests.demo.support import Broker, Child, Launch, OpenWs, free_port, launching, start_broker


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(args, name=..., env=None) -> Child: ``python *args``, stopped after the test if still running."""
    with launching(tmp_path, grace=10.0) as start:
        yield start


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

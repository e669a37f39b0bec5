"""Fixtures of the cluster tests: a real Redis (Debian's redis-server) on a free loopback port, and nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.cluster.support import RedisServer
from tests.demo.support import Launch, OpenWs, free_port, launching


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence on a free 127.0.0.1 port, stopped after the test."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(args, name=...) -> Child: ``python *args``, stopped after the test if still running."""
    with launching(tmp_path, grace=5.0) as start:
        yield start


@pytest.fixture
def open_ws() -> Iterator[OpenWs]:
    """open_ws(url) -> a WebSocket client connection, closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda url: stack.enter_context(connect(url, open_timeout=5))

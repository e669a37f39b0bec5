"""Fixtures of the reliability suite: the demo suite's child processes and WebSocket clients, reused."""

from tests.demo.conftest import launch, open_ws

__all__ = ["launch", "open_ws"]

"""Fixtures of the reliability suite: child processes killed after the test (or module), WebSocket clients."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.demo.conftest import open_ws
from tests.reliability.support import Launch, launching

__all__ = ["launch", "module_launch", "open_ws"]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(args, name=...) -> Child: ``python *args``, killed after the test."""
    with launching(tmp_path, grace=0.0) as start:
        yield start


@pytest.fixture(scope="module")
def module_launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """Like ``launch``, for processes that a whole module shares."""
    with launching(tmp_path_factory.mktemp("module"), grace=0.0) as start:
        yield start

"""Fixtures of the core tests: the real reactor (run by pytest-twisted) and a harness."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.core.harness import Harness


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def make_harness(reactor: Any) -> Iterator[Any]:
    """make_harness(backend=None, **settings) -> Harness; all are closed after the test."""
    made: list[Harness] = []

    def make(backend: Any = None, **settings: Any) -> Harness:
        harness = Harness(reactor, backend, **settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        pytest_twisted.blockon(harness.close())


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event published during the test."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)

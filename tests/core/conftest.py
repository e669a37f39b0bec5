"""Fixtures of the core tests: the real reactor (run by pytest-twisted) and a harness."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted

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

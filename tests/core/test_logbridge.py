"""pystrands.logbridge: library events reach stdlib logging, others do not."""

from __future__ import annotations

import logging

import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher

from pystrands.logbridge import _forward, bridge_to_stdlib


def test_pystrands_events_reach_stdlib_logging(caplog: pytest.LogCaptureFixture) -> None:
    bridge_to_stdlib()
    bridge_to_stdlib()
    try:
        with caplog.at_level(logging.DEBUG):
            Logger(namespace="pystrands.protocol").warn("lost {what}", what="the broker")
            Logger(namespace="someone.else").warn("not ours")
            try:
                raise ValueError("boom")
            except ValueError:
                Logger(namespace="pystrands.dispatch").failure("handler failed", level=LogLevel.error)
        records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
        assert records.count(("pystrands.protocol", logging.WARNING, "lost the broker")) == 1, "bridged once"
        assert not any(name == "someone.else" for name, _, _ in records)
        [failed] = [r for r in caplog.records if r.name == "pystrands.dispatch"]
        assert failed.levelno == logging.ERROR and failed.exc_info[0] is ValueError
    finally:
        globalLogPublisher.removeObserver(_forward)

"""pystrands.logbridge: library events reach stdlib logging, others do not."""

from __future__ import annotations

import logging
import logging.handlers

import pytest
from twisted.logger import Logger, LogLevel, globalLogPublisher

from pystrands import logbridge
from pystrands.logbridge import _forward, bridge_to_stdlib, leave_unhandled_to_twisted


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


def test_under_twistd_an_event_without_a_stdlib_handler_is_left_to_twisteds_log(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Python's last resort printed it to stderr, which twistd logged again as an error (review F12)."""
    monkeypatch.setattr(logbridge, "_unhandled_to_twisted", False)  # restored after the test
    ours = logging.getLogger("pystrands")
    monkeypatch.setattr(ours, "propagate", False)  # no handler above: pytest's are on the root logger
    warn = Logger(namespace="pystrands.protocol").warn
    bridge_to_stdlib()
    try:
        warn("a plain program sees this")
        assert capsys.readouterr().err == "a plain program sees this\n", "the last resort, as before"
        leave_unhandled_to_twisted()
        warn("twistd logs this once")
        assert capsys.readouterr().err == ""
        handler = logging.handlers.BufferingHandler(10)
        ours.addHandler(handler)
        try:
            warn("a handler of the application's takes this")
        finally:
            ours.removeHandler(handler)
        assert [record.getMessage() for record in handler.buffer] == ["a handler of the application's takes this"]
    finally:
        globalLogPublisher.removeObserver(_forward)

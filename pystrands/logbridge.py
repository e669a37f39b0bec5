"""Send this library's ``twisted.logger`` events to stdlib ``logging``.

Under twistd, or in any application that began Twisted logging, events reach
its observers already. The blocking and asyncio faces serve applications
that configure stdlib ``logging`` instead (``logging.basicConfig(...)``);
they call :func:`bridge_to_stdlib` when built (a send's warning may come
before any connect()), so ``pystrands.*``
events land in ``logging.getLogger("pystrands.<module>")``. Nothing happens
on import, and no stdlib handler is installed.

``twistd pystrands`` calls :func:`leave_unhandled_to_twisted`: twistd's log
has every event already, so one that no stdlib handler takes is not handed
to Python's last-resort handler, whose line on stderr twistd would log a
second time, as an error.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

__all__ = ["bridge_to_stdlib", "leave_unhandled_to_twisted"]

_LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


#: Set by :func:`leave_unhandled_to_twisted`: an event without a stdlib handler is not forwarded.
_unhandled_to_twisted = False


def _forward(event: dict[str, Any]) -> None:
    namespace = event.get("log_namespace") or ""
    if not namespace.startswith("pystrands"):
        return
    level = _LEVELS.get(event.get("log_level"), logging.INFO)
    logger = logging.getLogger(namespace)
    if not logger.isEnabledFor(level) or (_unhandled_to_twisted and not logger.hasHandlers()):
        return
    failure = event.get("log_failure")
    exc_info = (failure.type, failure.value, failure.getTracebackObject()) if failure is not None else None
    logger.log(level, formatEvent(event), exc_info=exc_info)


def bridge_to_stdlib() -> None:
    """Forward ``pystrands.*`` log events to stdlib logging; idempotent (as addObserver is)."""
    # A function of one event is an ILogObserver; an interface cannot say so of a plain function.
    globalLogPublisher.addObserver(cast(ILogObserver, _forward))


def leave_unhandled_to_twisted() -> None:
    """Forward no event that no stdlib handler takes: Twisted's log observers (twistd's log) have it already."""
    global _unhandled_to_twisted
    _unhandled_to_twisted = True

"""Send this library's ``twisted.logger`` events to stdlib ``logging``.

Under twistd, or in any application that began Twisted logging, events reach
its observers already. The blocking and asyncio faces serve applications
that configure stdlib ``logging`` instead (``logging.basicConfig(...)``);
they call :func:`bridge_to_stdlib` when built (a send's warning may come
before any connect()), so ``pystrands.*``
events land in ``logging.getLogger("pystrands.<module>")``. Nothing happens
on import, and no stdlib handler is installed.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

__all__ = ["bridge_to_stdlib"]

_LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


def _forward(event: dict[str, Any]) -> None:
    namespace = event.get("log_namespace") or ""
    if not namespace.startswith("pystrands"):
        return
    level = _LEVELS.get(event.get("log_level"), logging.INFO)
    logger = logging.getLogger(namespace)
    if not logger.isEnabledFor(level):
        return
    failure = event.get("log_failure")
    exc_info = (failure.type, failure.value, failure.getTracebackObject()) if failure is not None else None
    logger.log(level, formatEvent(event), exc_info=exc_info)


def bridge_to_stdlib() -> None:
    """Forward ``pystrands.*`` log events to stdlib logging; idempotent (as addObserver is)."""
    # A function of one event is an ILogObserver; an interface cannot say so of a plain function.
    globalLogPublisher.addObserver(cast(ILogObserver, _forward))

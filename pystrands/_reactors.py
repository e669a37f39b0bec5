"""A private reactor in a thread of its own, as the blocking face runs one per connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._internals import decline_io_thread, release_reactor

__all__ = ["start_reactor_thread"]


def _new_reactor() -> Any:
    """A fresh, uninstalled reactor of the best kind this platform has."""
    new_reactor: Callable[[], Any]
    try:
        from twisted.internet.epollreactor import EPollReactor as new_reactor
    except ImportError:
        try:
            from twisted.internet.pollreactor import PollReactor as new_reactor
        except ImportError:
            from twisted.internet.selectreactor import SelectReactor as new_reactor
    reactor = new_reactor()
    decline_io_thread(reactor)  # the process's "I/O thread" title belongs to an application reactor
    return reactor


def _run_reactor(reactor: Any) -> None:
    """Run ``reactor`` until stopped, then close what it holds (Twisted leaves that to the process's end)."""
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        release_reactor(reactor)


def start_reactor_thread() -> Any:
    """A new private reactor, running in a daemon thread of its own."""
    reactor = _new_reactor()
    running = threading.Event()
    reactor.callWhenRunning(running.set)
    thread = threading.Thread(target=_run_reactor, args=(reactor,), name="pystrands-reactor", daemon=True)
    thread.start()
    if not running.wait(10.0):
        raise RuntimeError("the PyStrands reactor thread did not start within 10s")
    return reactor

"""Handler tasks on the asyncio face's loop whose first step runs at once, within the read that brought the event."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from ._internals import run_first_step_now

__all__ = ["start_task"]


def start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task of ``coro`` on ``loop`` whose first step has already run, when it can run now.

    A handler that finishes without waiting then finishes within the read
    that brought its event, and its sends go out with the other replies to
    that read. Under a task factory the factory's task starts as it decides.
    A KeyboardInterrupt or SystemExit from the step is raised again from the
    loop, which it stops as when the loop runs a step; the task holds it too.
    """
    if loop.get_task_factory() is not None:
        return loop.create_task(coro)
    task = asyncio.Task.__new__(asyncio.Task)  # so that the task is at hand if its first step raises
    try:
        if sys.version_info >= (3, 12):  # Python 3.12 and later start a task eagerly on request
            asyncio.Task.__init__(task, coro, loop=loop, eager_start=True)
        else:
            asyncio.Task.__init__(task, coro, loop=loop)
            run_first_step_now(loop, task)
    except (KeyboardInterrupt, SystemExit) as exc:
        loop.call_soon(_raise, exc)
    return task


def _raise(exc: BaseException) -> None:
    """Raise ``exc`` (from a loop callback, where KeyboardInterrupt and SystemExit stop the loop)."""
    raise exc

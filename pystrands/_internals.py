"""Every private Twisted and asyncio attribute the library reads, behind one small function each.

Each function says which private attribute it reads, why no public API does
the job, and what it does instead when the attribute is missing (a Twisted or
Python upgrade may remove any of them without notice). The fallbacks keep the
library working, but slower or less tidy, so tests/compat/test_internals.py
fails naming the attribute when one disappears: an upgrade is then a decision,
not a silent change. The rest of the library uses none of these attributes
directly (the same test scans it); the names read are listed in ``PRIVATE_ATTRIBUTES``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ITransport

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "decline_io_thread",
    "loop_of_reactor",
    "on_loop_thread",
    "release_reactor",
    "run_first_step_now",
    "running_loop",
    "write_at_once",
    "write_buffer_empty",
]

#: Function of this module -> the private attributes it reads, as ``owner.attribute``.
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "decline_io_thread": ("ReactorBase._registerAsIOThread",),
    "release_reactor": ("ReactorBase._internalReaders", "EPollReactor._poller"),
    "loop_of_reactor": ("AsyncioSelectorReactor._asyncioEventloop",),
    "on_loop_thread": ("BaseEventLoop._thread_id",),
    "running_loop": ("asyncio._get_running_loop",),
    "run_first_step_now": ("BaseEventLoop._ready", "Handle._callback", "Handle._context", "Handle._args"),
    "write_buffer_empty": ("FileDescriptor._tempDataBuffer",),
}

_MISSING = object()


def decline_io_thread(reactor: Any) -> None:
    """Keep ``reactor``, a private one about to run in a thread of its own, from claiming the I/O thread title.

    A reactor that starts registers its thread as Twisted's I/O thread
    (``twisted.python.threadable.isInIOThread``) unless its private
    ``_registerAsIOThread`` flag is false; the title belongs to the
    application's reactor, if it has one. Without the flag (fallback) nothing
    is set, and the private reactor's thread takes the title when it starts.
    """
    if hasattr(reactor, "_registerAsIOThread"):
        reactor._registerAsIOThread = False


def release_reactor(reactor: Any) -> None:
    """Close the file descriptors of a private ``reactor`` that will not run again; Twisted leaves them open.

    That is the pipe the reactor wakes itself with (its public ``waker``),
    which it lists among its private ``_internalReaders``, and, for an epoll
    reactor, its private ``_poller``. Without ``_internalReaders`` (fallback)
    the waker is only unregistered and closed; without ``_poller``
    the epoll object is left to the garbage collector.
    """
    waker = reactor.waker
    if waker is not None:
        reactor.removeReader(waker)
        internal_readers = getattr(reactor, "_internalReaders", None)
        if internal_readers is not None:
            internal_readers.discard(waker)
        waker.connectionLost(None)
        reactor.waker = None
    close_poller = getattr(getattr(reactor, "_poller", None), "close", None)
    if close_poller is not None:
        close_poller()


def loop_of_reactor(reactor: Any) -> asyncio.AbstractEventLoop:
    """The asyncio loop an ``AsyncioSelectorReactor`` runs on.

    Twisted keeps it in the private ``_asyncioEventloop`` and has no public
    accessor. Without it (fallback), the loop running in the calling thread,
    which is the reactor's own when called from a coroutine on it; a
    RuntimeError when no loop is running there.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop
    return asyncio.get_running_loop()


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called in the thread that is running ``loop``.

    Compares the loop's private ``_thread_id`` (set while it runs) with the
    calling thread: cheaper than ``asyncio.get_running_loop()``, which makes a
    ``getpid()`` system call each time before Python 3.12, and this runs once
    per send. Without it (a loop that is not a ``BaseEventLoop``, such as
    uvloop's), the public ``running_loop() is loop``.
    """
    thread_id = getattr(loop, "_thread_id", _MISSING)
    if thread_id is _MISSING:
        return running_loop() is loop
    return thread_id == threading.get_ident()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in the calling thread, or None; without raising.

    Reads asyncio's private ``_get_running_loop()``: the public
    ``get_running_loop()`` raises RuntimeError off a loop, and raising and
    catching that on every call from a thread costs more than the call. Without
    it (fallback), the public function with the error caught.
    """
    get = getattr(asyncio, "_get_running_loop", None)
    if get is not None:
        loop: asyncio.AbstractEventLoop | None = get()
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_first_step_now(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> bool:
    """Run the first step of ``task``, just created on ``loop``, now rather than on the loop's next turn; True if run.

    For Python 3.10 and 3.11, which have no eager tasks (3.12 and later pass
    ``eager_start=True`` instead). ``Task.__init__`` appends the Handle of the
    task's first step to the loop's private ``_ready`` deque; while that Handle
    is still the last one there, the loop is running and no task is, running
    the Handle's private ``_callback`` with its ``_args`` in its ``_context``
    here is what the loop would do later, with the task current (so
    ``asyncio.timeout()``, TaskGroup and ``current_task()`` work in it).
    In any other case, or without these attributes (another loop such as
    uvloop, or a Python that changed them: the fallback), the step stays
    scheduled and False is returned.
    """
    ready = getattr(loop, "_ready", None)
    if type(ready) is not deque or not ready or asyncio.current_task(loop) is not None or not loop.is_running():
        return False
    step = ready[-1]
    callback = getattr(step, "_callback", None)
    context = getattr(step, "_context", None)
    args = getattr(step, "_args", None)
    if getattr(callback, "__self__", None) is not task or context is None or args is None:
        return False
    ready.pop()
    context.run(callback, *args)  # Handle._run(), minus logging what a task step never raises
    return True


def write_buffer_empty(transport: FileDescriptor) -> bool:
    """True when ``transport`` holds no data waiting to be written, so ``writeSomeData`` may send at once.

    A FileDescriptor buffers writes in ``dataBuffer`` and in its private list
    ``_tempDataBuffer``, and has no public way to ask whether both are empty.
    Without the list (fallback), False: the caller then writes through
    ``transport.write``, which is always correct, one reactor turn later.
    """
    return not transport.dataBuffer and not getattr(transport, "_tempDataBuffer", True)


def write_at_once(transport: ITransport, data: bytes) -> None:
    """Send ``data`` now as far as the socket takes it; the rest goes to ``transport.write``.

    A transport sends only on the reactor's next turn, after registering for
    writability and before unregistering: a poll and two epoll_ctl calls per
    round trip. A plain socket transport (a FileDescriptor, not TLS) that
    holds nothing yet (:func:`write_buffer_empty`) sends at once with
    ``writeSomeData``; an error it returns is left to the transport, which
    meets it again on its own turn. Any other transport, or one holding data
    (order is kept), gets all of it through ``write``.
    """
    if (isinstance(transport, FileDescriptor) and transport.connected and not transport.disconnecting
            and not getattr(transport, "TLS", False) and write_buffer_empty(transport)):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            data = data[sent:]
    if data:
        transport.write(data)

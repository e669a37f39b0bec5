"""A face as an IBackend: the adapter base the core calls, and the one send path every face uses.

A face (``PyStrandsClient``, ``AsyncPyStrandsClient``, ``PyStrands``) is an
application object with the documented callbacks. It becomes an ``IBackend``
through a registered zope adapter (:func:`backend_of`, one adapter per face
object), so the core and ``twistd pystrands`` take any face without asking
which it is. Each face's adapter subclass says where handlers run (the I/O
thread or worker threads, or tasks on the asyncio loop).

Sends: an encoded frame handed to the connection resolves to True (at once
when written at once, else once the buffered frame is written after a
reconnect); one that no connection will carry resolves to False and is
counted in a warning (:mod:`pystrands._dropped`), as pystrands 1.0.0 drops
them without raising. Past the buffer of a reconnect (a connection is
coming, but ``send_buffer_size`` sends already wait for it) the send fails
with SendBufferFull, counted in the same warning. An extension request keeps
failing with NotConnectedError: its caller is waiting for an answer.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from twisted.internet.defer import Deferred, fail
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from ._bridges import SENT, ReplyFuture, done_future, settle_concurrent
from ._dropped import dropped_sends_of
from .context import ConnectionRequestContext, Context
from .dispatch import already_succeeded
from .errors import NotConnectedError, SendBufferFull
from .interfaces import IBackend

if TYPE_CHECKING:
    from ._face import Face
    from .protocol import BrokerClientFactory

__all__ = [
    "NOT_SENT",
    "FaceBackend",
    "Outgoing",
    "backend_of",
    "in_handler_of",
    "issue",
    "mark_thread",
    "new_backend_of",
    "not_sent",
    "register_face",
    "run_as_handler",
    "sender_of",
]

#: What a face hands to the broker connection: an encoded send, or a checked extension request.
Outgoing: TypeAlias = bytes | wire.Request

#: The IBackend adapter class of a face.
_Backend = TypeVar("_Backend", bound="FaceBackend")

#: The result of every send no connection will carry (a done Future never changes, so one serves all).
NOT_SENT: concurrent.futures.Future[bool] = done_future(False)

#: The IBackend adapter whose handler the current thread or task is running, if any.
_handling: contextvars.ContextVar[FaceBackend | None] = contextvars.ContextVar("pystrands_handling", default=None)


def run_as_handler(backend: FaceBackend, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function(*args)`` marked as a handler of ``backend`` (see :func:`in_handler_of`, :func:`sender_of`).

    Tasks created inside copy the mark with the context.
    """
    token = _handling.set(backend)
    try:
        return function(*args)
    finally:
        _handling.reset(token)


def mark_thread(backend: FaceBackend) -> None:
    """Mark all that runs from now on in this thread (a private reactor's) as ``backend``'s handlers.

    The blocking face runs handlers inline on its reactor thread: one mark
    for the thread's life saves setting it per event.
    """
    _handling.set(backend)


def in_handler_of(face: Face[Any]) -> bool:
    """True inside one of ``face``'s handlers, where waiting for handlers would wait for itself."""
    marked = _handling.get()
    return marked is not None and marked.face is face


def sender_of(face: Face[_Backend]) -> _Backend:
    """The adapter a send of ``face`` from here goes through: in a handler, the handler's own.

    A handler of a connection that disconnect() gave up on (a worker thread,
    or a task that outlived its cancel) sends through its own connection's
    adapter, whose sends are dropped (False), never onto the next connection.
    """
    marked = _handling.get()
    if marked is not None and marked.face is face:
        return cast("_Backend", marked)  # an adapter of face: of its _backend_class
    return backend_of(face)


def issue(broker: BrokerClientFactory, item: Outgoing) -> Deferred[Any]:
    """Hand ``item`` to ``broker`` on its reactor's thread: a send's Deferred, or a request's."""
    if isinstance(item, bytes):
        return broker.send_frame(item)
    return broker.request(item)


def _not_connected(reason: str) -> NotConnectedError:
    return NotConnectedError(f"not connected to the broker: {reason}")


def _true(_: object) -> bool:
    return True


def not_sent(owner: object, item: Outgoing, reason: str,
             io_thread: int | None = None) -> concurrent.futures.Future[Any]:
    """The Future of ``item`` when no connection will carry it.

    False for a send (counted in ``owner``'s warning), a NotConnectedError
    saying ``reason`` for a request.
    """
    if isinstance(item, bytes):
        dropped_sends_of(owner).dropped(str(_not_connected(reason)))
        return NOT_SENT
    future = ReplyFuture(io_thread, item.action)
    future.set_exception(_not_connected(reason))
    return future


@implementer(IBackend)
class FaceBackend:
    """A face as an IBackend: each callback goes to the face through :meth:`call`; sends go out here."""

    def __init__(self, face: Any) -> None:
        self.face = face
        #: The reactor the connection runs on: set by :meth:`attach`, or earlier by
        #: :func:`new_backend_of` for a session's cycle, whose sends then wait for the connection.
        self.reactor: Any = None
        self._broker: BrokerClientFactory | None = None
        self._outgoing: list[tuple[Outgoing, concurrent.futures.Future[Any]]] = []
        self._outgoing_lock = threading.Lock()
        self._flush_scheduled = False
        #: The thread the reactor runs in, when known: sends from it skip the hand-over.
        self.io_thread: int | None = None
        #: Why sends from other threads are not made: the reactor runs no more.
        self._ended: str | None = None

    @property
    def broker(self) -> BrokerClientFactory | None:
        """The connection the core set (None before the first start)."""
        return self._broker

    @broker.setter
    def broker(self, broker: BrokerClientFactory) -> None:
        self.attach(broker)
        self._broker = broker
        self._ended = None

    def attach(self, broker: BrokerClientFactory) -> None:
        """Get ready to run ``broker``'s events (the core sets it before the first); a face adds its own."""
        self.reactor = broker.reactor

    def reactor_ended(self, reason: str) -> None:
        """The reactor will run no more: sends from other threads, queued or new, are not made (``reason``)."""
        with self._outgoing_lock:
            self._ended = reason
            outgoing, self._outgoing = self._outgoing, []
            self._flush_scheduled = False
        for frame, future in outgoing:
            if future.set_running_or_notify_cancel():
                settle_concurrent(future, self.outcome(frame, fail(_not_connected(reason))))

    # -- events -> the face -------------------------------------------------

    def call(self, handler: Callable[..., Any], *args: Any) -> Any:
        """Run one handler of the face; a value or a Deferred."""
        raise NotImplementedError

    def on_connection_request(self, request: ConnectionRequestContext) -> Any:
        return self.call(self.face.on_connection_request, request)

    def on_new_connection(self, context: Context) -> Any:
        return self.call(self.face.on_new_connection, context)

    def on_message(self, message: str, context: Context) -> Any:
        return self.call(self.face.on_message, message, context)

    def on_disconnect(self, context: Context) -> Any:
        return self.call(self.face.on_disconnect, context)

    def on_error(self, error: str, context: Context) -> Any:
        return self.call(self.face.on_error, error, context)

    # -- sends: the one path --------------------------------------------------

    def outcome(self, item: Outgoing, handed: Deferred[Any]) -> Deferred[Any]:
        """What the face's caller learns of ``item``: a send's True/False (see the module docstring), a reply."""
        if isinstance(item, bytes):
            return handed.addCallbacks(_true, self._dropped)
        return handed

    def _dropped(self, failure: Failure) -> bool | Failure:
        """A send no connection will carry: counted in the warning, and False; past the buffer, SendBufferFull."""
        failure.trap(NotConnectedError)
        dropped = dropped_sends_of(self.face).dropped(str(failure.value))
        if failure.check(SendBufferFull):  # a connection is coming, but its buffer is full: the caller sees it
            return failure
        return dropped

    def not_sent(self, item: Outgoing, reason: str) -> concurrent.futures.Future[Any]:
        """The Future of ``item`` when no connection will carry it (see :func:`not_sent`)."""
        return not_sent(self.face, item, reason, self.io_thread)

    def send(self, item: Outgoing) -> concurrent.futures.Future[Any]:
        """Send from any thread; a concurrent Future of the outcome (see :meth:`outcome`).

        Before the connection is set, a send to a known reactor (a cycle's
        connect() under way) waits in the queue the connection takes first.
        """
        broker, ended = self._broker, self._ended
        if ended is not None:
            return self.not_sent(item, ended)
        if broker is not None and threading.get_ident() == self.io_thread:
            return self._send_now(broker, item)
        if broker is None and self.reactor is None:
            return self.not_sent(item, "call connect() or run_forever() first")
        return self._hand_over(item)

    def _send_now(self, broker: BrokerClientFactory, item: Outgoing) -> concurrent.futures.Future[Any]:
        """On the reactor's thread: hand the item over at once (after what other threads sent before)."""
        if self._outgoing:  # sends from other threads came first (a handler's helper thread, say)
            self.flush()
        handed = issue(broker, item)
        if isinstance(item, bytes) and already_succeeded(handed):
            return SENT
        future = self._new_future(item)
        future.set_running_or_notify_cancel()  # the item is handed over: too late to cancel
        return settle_concurrent(future, self.outcome(item, handed))

    def _new_future(self, item: Outgoing) -> concurrent.futures.Future[Any]:
        if isinstance(item, bytes):
            return concurrent.futures.Future()
        return ReplyFuture(self.io_thread, item.action)

    def _hand_over(self, item: Outgoing) -> concurrent.futures.Future[Any]:
        """From another thread: queue the item for the reactor thread, which takes the queue whole.

        A handler that sends many costs one ``callFromThread``, not one per frame.
        """
        with self._outgoing_lock:
            ended = self._ended
            if ended is None:
                future = self._new_future(item)
                self._outgoing.append((item, future))
                schedule, self._flush_scheduled = not self._flush_scheduled, True
        if ended is not None:
            return self.not_sent(item, ended)
        if schedule:
            try:
                self.reactor.callFromThread(self.flush)
            except RuntimeError as exc:  # the asyncio loop behind the reactor is closed: it runs no more
                self.reactor_ended(str(exc))
        return future

    def flush(self) -> None:
        """On the reactor's thread: hand over what other threads sent, in order.

        Before the connection is made (a cycle's connect() has not reached
        the reactor yet) the queue waits: the session flushes it once started.
        """
        broker = self._broker
        if broker is None:
            return
        with self._outgoing_lock:
            outgoing, self._outgoing = self._outgoing, []
            self._flush_scheduled = False
        for item, future in outgoing:
            if future.set_running_or_notify_cancel():  # else cancelled before its turn: not sent
                settle_concurrent(future, self.outcome(item, issue(broker, item)))


def backend_of(face: Face[_Backend]) -> _Backend:
    """The current IBackend adapter of ``face`` (made on first use, of the face's ``_backend_class``)."""
    backend: _Backend | None = face.__dict__.get("_pystrands_backend")
    if backend is None:
        backend = new_backend_of(face)
    return backend


def new_backend_of(face: Face[_Backend], reactor: Any = None) -> _Backend:
    """A new IBackend adapter of ``face`` on ``reactor``, from now on the one :func:`backend_of` gives.

    A face that starts a reactor per connection takes one per connection, so
    that nothing of a finished connection's (its queue of sends, its reactor,
    events still running on it) reaches the next one. Its reactor is set
    before anyone can send through it, so no send is dropped while the
    connection is made.
    """
    backend = type(face)._backend_class(face)
    backend.reactor = reactor
    face.__dict__["_pystrands_backend"] = backend
    return backend


def register_face(face_class: type, adapt: Callable[[Any], FaceBackend] = backend_of) -> None:
    """Register ``adapt`` as the IBackend adapter of ``face_class`` and its subclasses."""
    registerAdapter(adapt, face_class, IBackend)

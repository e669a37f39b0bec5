"""What the three faces share: constructor checks, the IBackend adapter base, sends.

A face (``PyStrandsClient``, ``AsyncPyStrandsClient``, ``PyStrands``) is an application
object with the documented callbacks. It becomes an ``IBackend`` through a
registered zope adapter (:func:`backend_of`, one adapter per face object),
so the core and ``twistd pystrands`` take any face without asking which it
is. The adapter learns its reactor from the ``broker`` the core sets on it,
and each face's adapter subclass says where handlers run (worker threads,
or tasks on the asyncio loop).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.components import registerAdapter
from zope.interface import implementer

from . import wire
from .backend import DefaultCallbacks
from .context import ConnectionRequestContext, Context
from .dispatch import already_succeeded
from .errors import NotConnectedError
from .interfaces import IBackend
from .settings import BackendSettings, check_port

if TYPE_CHECKING:
    from .protocol import BrokerClientFactory

__all__ = [
    "BrokerEndpoint",
    "Face",
    "FaceBackend",
    "Options",
    "Outgoing",
    "ReplyFuture",
    "backend_of",
    "call_in_reactor",
    "close_waker",
    "in_handler_of",
    "issue",
    "new_backend_of",
    "register_face",
    "run_as_handler",
]

log = Logger()

#: Settings with their own constructor parameter (the documented ones).
_DOCUMENTED = ("auto_reconnect", "reconnect_delay", "max_reconnect_delay", "reconnect_backoff")

#: The IBackend adapter class of a face.
_Backend = TypeVar("_Backend", bound="FaceBackend")

#: What a face hands to the broker connection: an encoded send, or a checked extension request.
Outgoing: TypeAlias = bytes | wire.Request

#: The face whose handler the current thread or task is running, if any.
_handling: contextvars.ContextVar[object] = contextvars.ContextVar("pystrands_handling", default=None)


def run_as_handler(face: object, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function(*args)`` marked as a handler of ``face`` (so disconnect() knows not to wait for it).

    Tasks created inside copy the mark with the context.
    """
    token = _handling.set(face)
    try:
        return function(*args)
    finally:
        _handling.reset(token)


def in_handler_of(face: Face[Any]) -> bool:
    """True inside one of ``face``'s handlers, where waiting for handlers would wait for itself.

    That is a call marked by :func:`run_as_handler`, or one on the face's I/O
    thread (the blocking face runs handlers there unmarked, to save the
    mark's cost per event; nothing else there may wait for handlers either).
    """
    return _handling.get() is face or threading.get_ident() == backend_of(face).io_thread


class Options:
    """The documented constructor of every face, its checks, and the settings it makes."""

    #: Handlers of different WebSocket clients that may run at once, unless ``concurrency`` is given.
    _default_concurrency: int = BackendSettings.concurrency

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8081,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
        **settings: Any,
    ) -> None:
        unknown = sorted(set(settings) - (BackendSettings.names() - set(_DOCUMENTED)))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        #: Host name or IP address of the broker's backend port.
        self.host = host
        #: The broker's backend port.
        self.port = port
        #: Reconnect after a lost or failed connection.
        self.auto_reconnect = auto_reconnect
        #: Seconds before the first reconnection attempt.
        self.reconnect_delay = reconnect_delay
        #: Cap on the delay between attempts, in seconds.
        self.max_reconnect_delay = max_reconnect_delay
        #: Factor by which the delay grows after each failed attempt.
        self.reconnect_backoff = reconnect_backoff
        self._settings_overrides = dict(settings)
        self._settings()
        self._init_state()

    def _init_state(self) -> None:
        """Set up a face's own state; each face overrides this rather than the constructor."""

    def _settings(self) -> BackendSettings:
        """The validated settings from the current attributes (they may be changed until connect)."""
        if not isinstance(self.host, str):
            raise TypeError(f"host must be a str, not {type(self.host).__name__}")
        if not self.host:
            raise ValueError("host must not be empty")
        check_port("port", self.port)
        options = {"concurrency": self._default_concurrency, **self._settings_overrides}
        options.update((name, getattr(self, name)) for name in _DOCUMENTED)
        return BackendSettings(**options)


class Face(Options, DefaultCallbacks, Generic[_Backend]):
    """What the blocking and asyncio faces share: state, the adapter, the documented default callbacks."""

    #: The IBackend adapter class of this face.
    _backend_class: type[_Backend]
    #: Seconds a single connection attempt may take (name resolution and TCP connect).
    connect_timeout: float = 10.0

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the broker is open."""
        broker = backend_of(self).broker
        return broker is not None and broker.connected


def close_waker(reactor: Any) -> None:
    """Close the pipe a private reactor wakes itself with; Twisted leaves it open until the process ends."""
    waker = reactor.waker
    if waker is not None:
        reactor.removeReader(waker)
        reactor._internalReaders.discard(waker)
        waker.connectionLost(None)
        reactor.waker = None


def call_in_reactor(reactor: Any, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    """Run ``function`` on ``reactor``'s thread from any thread; its (Deferred) result as a Future."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            maybeDeferred(function, *args).addCallbacks(
                future.set_result, lambda failure: future.set_exception(failure.value))

    try:
        reactor.callFromThread(run)
    except RuntimeError as exc:  # the asyncio loop behind the reactor is closed
        future.set_exception(_not_connected(str(exc)))
    return future


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects a name resolution's addresses into a Deferred."""

    def __init__(self) -> None:
        self.found: list[IPv4Address | IPv6Address] = []
        self.done: Deferred[list[IPv4Address | IPv6Address]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.found.append(cast("IPv4Address | IPv6Address", address))  # what name resolvers give

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


@implementer(IStreamClientEndpoint)
class BrokerEndpoint:
    """TCP to ``host:port``: each address the reactor's name resolver gives, tried in turn.

    What ``HostnameEndpoint`` does, minus its ``LoopingCall``, whose
    constructor imports (and so installs) the global reactor: a private
    reactor must leave the global one to the application.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``factory``; cancelling stops the lookup or attempt under way."""
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addresses = _Addresses()
        self.reactor.nameResolver.resolveHostName(addresses, self.host, self.port)
        found = await addresses.done.addTimeout(self.timeout, self.reactor)
        if not found:
            raise DNSLookupError(f"no address for {self.host!r}")
        error: ConnectError | None = None
        for address in found:
            kind = TCP6ClientEndpoint if isinstance(address, IPv6Address) else TCP4ClientEndpoint
            try:
                return await kind(self.reactor, address.host, self.port, self.timeout).connect(factory)
            except ConnectError as exc:
                error = exc
        assert error is not None  # there was an address, and connecting to each failed
        raise error


def _report_failed_send(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warn("A send to the broker failed: {why}", why=future.exception())


def _not_connected(reason: str) -> NotConnectedError:
    return NotConnectedError(f"not connected to the broker: {reason}")


def _failed_send(item: Outgoing, reason: str) -> concurrent.futures.Future[Any]:
    """The Future of a send or request that cannot be made, failed with ``reason``."""
    future = _new_send_future(item)
    future.set_exception(_not_connected(reason))
    return future


class ReplyFuture(concurrent.futures.Future[Any]):
    """The Future of an extension request: waiting for it on the I/O thread raises instead of hanging.

    The reply is read on that thread, so a handler there that waited would
    wait for itself (and the request's timeout, also on that thread, would
    never fire).

    A request made and forgotten (``client.join_room(...)`` with the Future
    dropped) that fails is logged as a warning once the Future is let go,
    like a failed send: unless its ``result()`` or ``exception()`` was asked
    for or a done callback added, which see the failure themselves.
    """

    def __init__(self, io_thread: int | None, action: str = "") -> None:
        super().__init__()
        self._io_thread = io_thread
        self._action = action
        #: True once the outcome was asked for: its failure is then the caller's, not logged.
        self._retrieved = False

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """As ``Future.add_done_callback``; the callback sees a failure, so it is not logged."""
        self._retrieved = True
        super().add_done_callback(fn)

    def __del__(self) -> None:
        if self._retrieved or not self.done() or self.cancelled():
            return
        error = concurrent.futures.Future.exception(self, 0)
        if error is not None:
            log.warn("A {action} request to the broker failed and nobody asked for its result: {why}",
                     action=self._action or "broker", why=error)

    def _check_thread(self) -> None:
        if not self.done() and self._io_thread is not None and threading.get_ident() == self._io_thread:
            raise RuntimeError(
                "waiting for a request's reply on the I/O thread would wait forever (the reply is read"
                " there): use add_done_callback, or handlers in worker threads (concurrency=N)")

    def result(self, timeout: float | None = None) -> Any:
        """The reply's result, as ``Future.result``; RuntimeError on the I/O thread before it came."""
        self._retrieved = True
        self._check_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The request's exception, as ``Future.exception``; RuntimeError on the I/O thread before it came."""
        self._retrieved = True
        self._check_thread()
        return super().exception(timeout)


def _new_send_future(item: Outgoing, io_thread: int | None = None) -> concurrent.futures.Future[Any]:
    """A Future for one send, whose failure is logged even if nobody looks at it.

    A request's failure is logged only if nobody asks for its result (see :class:`ReplyFuture`).
    """
    if not isinstance(item, bytes):
        return ReplyFuture(io_thread, item.action)
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.add_done_callback(_report_failed_send)
    return future


def issue(broker: BrokerClientFactory, item: Outgoing) -> Deferred[Any]:
    """Hand ``item`` to ``broker`` on its reactor's thread: a send's Deferred, or a request's."""
    if isinstance(item, bytes):
        return broker.send_frame(item)
    return broker.request(item)


def _settle(future: concurrent.futures.Future[Any], sent: Deferred[Any]) -> None:
    """Complete a running ``future`` as ``sent`` fires."""
    sent.addCallbacks(future.set_result, lambda failure: future.set_exception(failure.value))


#: The result of every send written at once: a done Future never changes, so one serves all.
_WRITTEN: concurrent.futures.Future[None] = concurrent.futures.Future()
_WRITTEN.set_result(None)


@implementer(IBackend)
class FaceBackend:
    """A face as an IBackend: each callback goes to the face through :meth:`call`."""

    def __init__(self, face: Face[Any]) -> None:
        self.face = face
        self.reactor: Any = None
        self._broker: BrokerClientFactory | None = None
        self._outgoing: list[tuple[Outgoing, concurrent.futures.Future[Any]]] = []
        self._outgoing_lock = threading.Lock()
        self._flush_scheduled = False
        #: The thread the reactor runs in, when known: sends from it skip the hand-over.
        self.io_thread: int | None = None
        #: Why sends from other threads fail at once: the reactor runs no more.
        self._ended: str | None = None

    @property
    def broker(self) -> BrokerClientFactory | None:
        """The connection the core set (None before the first start)."""
        return self._broker

    @broker.setter
    def broker(self, broker: BrokerClientFactory) -> None:
        self.reactor = self.reactor_of(broker)
        self._broker = broker
        self._ended = None

    def reactor_ended(self, reason: str) -> None:
        """The reactor will run no more: sends from other threads, queued or new, fail with ``reason``."""
        with self._outgoing_lock:
            self._ended = reason
            outgoing, self._outgoing = self._outgoing, []
            self._flush_scheduled = False
        for _, future in outgoing:
            if future.set_running_or_notify_cancel():
                future.set_exception(_not_connected(reason))

    def reactor_of(self, broker: BrokerClientFactory) -> Any:
        """The reactor that ``broker`` runs on."""
        return broker.reactor

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

    def send(self, frame: Outgoing) -> concurrent.futures.Future[Any]:
        """Send from any thread: a concurrent Future that completes once the frame is written.

        ``frame`` may also be an extension request (a :class:`~pystrands.wire.Request`):
        then the Future gives its reply's result. Both take the same path, in order.
        """
        broker = self._broker
        if broker is None:
            return _failed_send(frame, "call connect() or run_forever() first")
        if threading.get_ident() == self.io_thread:
            return self._send_now(broker, frame)
        return self._hand_over(frame)

    def _send_now(self, broker: BrokerClientFactory, frame: Outgoing) -> concurrent.futures.Future[Any]:
        """On the reactor's thread: hand the frame over at once (after what other threads sent before)."""
        if self._outgoing:  # sends from other threads came first (a handler's helper thread, say)
            self._flush()
        sent = issue(broker, frame)
        if isinstance(frame, bytes) and already_succeeded(sent):
            return _WRITTEN
        future = _new_send_future(frame, self.io_thread)
        future.set_running_or_notify_cancel()  # the frame is handed over: too late to cancel
        _settle(future, sent)
        return future

    def _hand_over(self, frame: Outgoing) -> concurrent.futures.Future[Any]:
        """From another thread: queue the frame for the reactor thread, which takes the queue whole.

        A handler that sends many costs one ``callFromThread``, not one per frame.
        """
        with self._outgoing_lock:
            ended = self._ended
            if ended is None:
                future = _new_send_future(frame, self.io_thread)
                self._outgoing.append((frame, future))
                schedule, self._flush_scheduled = not self._flush_scheduled, True
        if ended is not None:
            return _failed_send(frame, ended)
        if schedule:
            try:
                self.reactor.callFromThread(self._flush)
            except RuntimeError as exc:  # the asyncio loop behind the reactor is closed: it runs no more
                self.reactor_ended(str(exc))
        return future

    def _flush(self) -> None:
        with self._outgoing_lock:
            outgoing, self._outgoing = self._outgoing, []
            self._flush_scheduled = False
        broker = self._broker
        assert broker is not None  # a send is queued only once the broker is set, and it stays set
        for frame, future in outgoing:
            if future.set_running_or_notify_cancel():  # else cancelled before its turn: not sent
                _settle(future, issue(broker, frame))


def backend_of(face: Face[_Backend]) -> _Backend:
    """The current IBackend adapter of ``face`` (made on first use, of the face's ``_backend_class``)."""
    backend: _Backend | None = face.__dict__.get("_pystrands_backend")
    if backend is None:
        backend = new_backend_of(face)
    return backend


def new_backend_of(face: Face[_Backend]) -> _Backend:
    """A new IBackend adapter of ``face``, from now on the one :func:`backend_of` gives.

    A face that starts a reactor per connection takes one per connection, so
    that nothing of a finished connection's (its queue of sends, its reactor,
    events still running on it) reaches the next one.
    """
    backend = type(face)._backend_class(face)
    face.__dict__["_pystrands_backend"] = backend
    return backend


def register_face(face_class: type, adapt: Callable[[Any], FaceBackend] = backend_of) -> None:
    """Register ``adapt`` as the IBackend adapter of ``face_class`` and its subclasses."""
    registerAdapter(adapt, face_class, IBackend)

"""AsyncPyStrandsClient: the asyncio face, running natively on the caller's event loop.

Twisted I/O runs on a private ``AsyncioSelectorReactor`` bound to the
running loop (no global reactor installed, no thread for I/O), so the
client lives inside any asyncio application (FastAPI, aiohttp, a script
under ``asyncio.run``). ``async def`` callbacks run as asyncio tasks on that
loop, different WebSocket clients' at the same time (each client's events in
order); a plain ``def`` callback runs on the loop too.

A callback's task takes its first step at once, within the read that brought
the event, and a send written at once returns a future that is already
done: a callback that does not wait for anything else finishes there, and
its replies go out with the others to that read.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import CoroutineType
from typing import Any, ClassVar, Literal, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from ._faces import (
    BrokerEndpoint,
    Face,
    FaceBackend,
    Outgoing,
    backend_of,
    close_waker,
    in_handler_of,
    issue,
    register_face,
    run_as_handler,
)
from .backend import DefaultCallbacks
from .context import ConnectionRequestContext, Context
from .dispatch import already_succeeded
from .logbridge import bridge_to_stdlib
from .protocol import BrokerClientFactory
from .settings import BackendSettings, check_number

__all__ = ["AsyncPyStrandsClient", "LoopResolver"]

log = Logger()

#: Extra seconds, beyond a disconnect's handler timeout, allowed for closing the socket.
_CLOSE_GRACE = 2.0

_NEEDS_ASYNCIO_REACTOR = (
    "AsyncPyStrandsClient runs on Twisted's asyncio reactor: add --reactor=asyncio"
    " (twistd --reactor=asyncio pystrands ...)"
)


def _ip_literal(host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]] | None:
    """getaddrinfo's answer for an IP address, without a lookup (so without a thread); else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    found = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    if family not in (socket.AF_UNSPEC, found):
        return []
    sockaddr = (host, port, 0, 0) if found == socket.AF_INET6 else (host, port)
    return [(found, kind, 0, "", sockaddr)]


@implementer(IHostResolution)
class _Resolution:
    """One name lookup in progress."""

    def __init__(self, name: str, task: asyncio.Future[Any]) -> None:
        self.name = name
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()


@implementer(IHostnameResolver)
class LoopResolver:
    """Resolves names with the asyncio loop's getaddrinfo.

    Twisted's default resolver waits for a thread pool that only starts when
    the reactor is ``run()``; a reactor bound to someone else's loop never is.
    """

    _FAMILIES: ClassVar[dict[frozenset[type[IAddress]] | None, int]] = {
        None: socket.AF_UNSPEC,
        frozenset([IPv4Address]): socket.AF_INET,
        frozenset([IPv6Address]): socket.AF_INET6,
    }

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Look ``hostName`` up with the loop's getaddrinfo (an IP literal at once, without a thread)."""
        family = self._FAMILIES.get(None if addressTypes is None else frozenset(addressTypes),
                                    socket.AF_UNSPEC)
        semantics: Literal["TCP", "UDP"] = "TCP" if transportSemantics == "TCP" else "UDP"
        kind = socket.SOCK_STREAM if semantics == "TCP" else socket.SOCK_DGRAM
        lookup = self.loop.create_future()
        literal = _ip_literal(hostName, portNumber, family, kind)
        if literal is not None:
            lookup.set_result(literal)
        else:
            lookup = asyncio.ensure_future(
                self.loop.getaddrinfo(hostName, portNumber, family=family, type=kind), loop=self.loop)
        resolution = _Resolution(hostName, lookup)
        resolutionReceiver.resolutionBegan(resolution)

        def done(lookup: asyncio.Future[Any]) -> None:
            names = [] if lookup.cancelled() or lookup.exception() is not None else lookup.result()
            for found_family, _, _, _, address in names:
                make = IPv6Address if found_family == socket.AF_INET6 else IPv4Address
                resolutionReceiver.addressResolved(make(semantics, *address))
            resolutionReceiver.resolutionComplete()

        lookup.add_done_callback(done)
        return resolution


def _require_asyncio_reactor() -> None:
    """A TypeError saying what to do unless the installed global reactor is the asyncio one."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if not isinstance(reactor, AsyncioSelectorReactor):
        raise TypeError(_NEEDS_ASYNCIO_REACTOR)


def _run_first_step_now(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Run the first step of ``task``, just created, now rather than on the loop's next iteration.

    For Python 3.10 and 3.11, which have no eager tasks. ``Task.__init__``
    appends the Handle of its first step to ``loop._ready``, a private deque
    of BaseEventLoop. While that Handle is still the last one there and no
    task is running, running it here is what the loop would do later, with
    the task current (so asyncio.timeout(), TaskGroup and current_task() work
    in the handler). Any other loop (uvloop) or state leaves the step
    scheduled as usual.
    """
    ready = getattr(loop, "_ready", None)
    if (type(ready) is deque and ready and asyncio.current_task(loop) is None
            and getattr(ready[-1]._callback, "__self__", None) is task and loop.is_running()):
        step = ready.pop()
        step._context.run(step._callback, *step._args)  # Handle._run(), minus logging what steps never raise


def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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
            _run_first_step_now(loop, task)
    except (KeyboardInterrupt, SystemExit) as exc:
        loop.call_soon(_raise, exc)
    return task


def _raise(exc: BaseException) -> None:
    """Raise ``exc`` (from a loop callback, where KeyboardInterrupt and SystemExit stop the loop)."""
    raise exc


class AsyncioBackend(FaceBackend):
    """An asyncio face as an IBackend: awaitable results become tasks on the reactor's loop."""

    def __init__(self, face: Face[Any]) -> None:
        super().__init__(face)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._written: asyncio.Future[None] | None = None

    def reactor_of(self, broker: Any) -> Any:
        reactor = super().reactor_of(broker)
        if not isinstance(reactor, AsyncioSelectorReactor):
            raise TypeError(_NEEDS_ASYNCIO_REACTOR)
        self.loop = loop = reactor._asyncioEventloop  # the loop the reactor runs on (no public accessor)
        # What every send written at once returns: a done future never changes, so one serves all.
        self._written = loop.create_future()
        self._written.set_result(None)
        return reactor

    def call(self, handler: Callable[..., Any], *args: Any) -> Any:
        return run_as_handler(self.face, self._start, handler, *args)

    def _start(self, handler: Callable[..., Any], *args: Any) -> Any:
        """Call the handler; a coroutine runs as a task (inheriting the mark), its first step at once.

        A task done after that step gives its outcome at once, a value or a
        raised exception (retrieved, so asyncio does not log it again); a
        task still running becomes a Deferred.
        """
        result = handler(*args)
        if result is None:
            return None
        if isinstance(result, CoroutineType):
            loop = self.loop
            assert loop is not None  # set with the broker, before any event
            task = _start_task(loop, result)
            if not task.done():
                return Deferred.fromFuture(task)
            if not task.cancelled() and isinstance(task.exception(), (KeyboardInterrupt, SystemExit)):
                return None  # _start_task raises it again from the loop: not a handler failure to log too
            return task.result()
        if inspect.isawaitable(result):
            return Deferred.fromFuture(asyncio.ensure_future(result, loop=self.loop))
        return result

    def send(self, frame: Outgoing) -> Any:
        """On a loop: an asyncio Future (await it, or not); from a thread without one: a concurrent one.

        ``frame`` may be an extension request: the future then gives its result.
        """
        loop = self.loop
        # BaseEventLoop's (private) record of the thread it runs in is a cheaper test than
        # get_running_loop(), which makes a getpid() system call each time before Python 3.12.
        if loop is not None and getattr(loop, "_thread_id", None) == threading.get_ident():
            return self._send_on_loop(frame)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return super().send(frame)
        if running is loop:  # a loop without that record
            return self._send_on_loop(frame)
        return asyncio.wrap_future(super().send(frame), loop=running)

    def _send_on_loop(self, frame: Outgoing) -> asyncio.Future[Any]:
        """Send on the face's own loop; a frame written at once gives the shared done future.

        Awaiting that does not suspend the handler, which then usually
        finishes in its first step.
        """
        broker, loop, written = self._broker, self.loop, self._written
        assert broker is not None and loop is not None and written is not None  # all set with the broker
        sent = issue(broker, frame)
        if isinstance(frame, bytes) and already_succeeded(sent):
            return written
        future: asyncio.Future[Any] = loop.create_future()

        def written_later(result: object) -> None:
            if not future.done():
                future.set_result(result)

        def failed(failure: Failure) -> None:
            if not future.done():
                future.set_exception(failure.value)  # type: ignore[arg-type]  # Twisted infers value optional

        sent.addCallbacks(written_later, failed)
        return future


def _adapt(face: AsyncPyStrandsClient) -> AsyncioBackend:
    """The IBackend of ``face``; when no session of its own made it, the global reactor must suit."""
    backend = backend_of(face)
    if backend.broker is None:
        _require_asyncio_reactor()
    return backend


class _Session:
    """One connect() .. disconnect() cycle: a private reactor on the loop and a core factory."""

    def __init__(self, backend: AsyncioBackend, settings: BackendSettings) -> None:
        self.loop = asyncio.get_running_loop()
        self.reactor = AsyncioSelectorReactor(self.loop)
        self.reactor.installNameResolver(LoopResolver(self.loop))
        self.factory = BrokerClientFactory(backend, self.reactor, settings)
        self.done = asyncio.Event()
        self.closing: asyncio.Task[None] | None = None

    def start(self, host: str, port: int, timeout: float) -> asyncio.Future[bool]:
        """Start connecting; a future of the first attempt's outcome (bool)."""
        attempt = self.factory.next_attempt()
        self.factory.connect(BrokerEndpoint(self.reactor, host, port, timeout=timeout))
        return attempt.asFuture(self.loop)

    @property
    def retrying(self) -> bool:
        """True while the factory keeps (re)connecting on its own."""
        return self.closing is None and bool(self.factory.continueTrying)

    def stop(self, timeout: float) -> asyncio.Task[None]:
        """Stop the factory (handlers get ``timeout`` seconds), then release the reactor; idempotent."""
        if self.closing is None:
            self.closing = self.loop.create_task(self._stop(timeout))
        self.done.set()
        return self.closing

    async def _stop(self, timeout: float) -> None:
        stopped = self.factory.stop(timeout).asFuture(self.loop)
        try:
            done, _ = await asyncio.wait([stopped], timeout=timeout + _CLOSE_GRACE)
            if not done:
                log.warn("The broker connection did not close within {timeout}s",
                         timeout=timeout + _CLOSE_GRACE)
        finally:
            self._release_reactor()

    def _release_reactor(self) -> None:
        """Close what the private reactor holds on the loop: timers, and its waker's pipe."""
        reactor = self.reactor
        if self.factory.current is not None:
            self.factory.current.transport.abortConnection()
        for call in reactor.getDelayedCalls():
            call.cancel()
        close_waker(reactor)


class AsyncPyStrandsClient(Face[AsyncioBackend]):
    """Asyncio client: subclass it, override the ``on_*`` callbacks (``async def``), await run_forever().

    Parameters are the documented ones (see the class signature) plus the
    core's settings as keywords (``concurrency``, ``idle_timeout``,
    ``max_line_length``, ``send_buffer_size``, ``backend_token``, ...).
    """

    _backend_class = AsyncioBackend

    def _init_state(self) -> None:
        self._session: _Session | None = None

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the broker is open (on a loop that still runs)."""
        session = self._session
        return session is not None and not session.loop.is_closed() and super().connected

    async def connect(self) -> bool:
        """Connect to the broker; True once connected, False if the attempt failed or timed out.

        With ``auto_reconnect`` a failed attempt is retried in the background.
        """
        bridge_to_stdlib()  # this face serves applications that use stdlib logging
        if self.connected:
            return True
        settings = self._settings()
        previous, self._session = self._session, None
        if previous is not None and not previous.loop.is_closed():  # else it died with its loop
            await previous.stop(0.0)
        session = self._session = _Session(backend_of(self), settings)
        attempt = session.start(self.host, self.port, self.connect_timeout)
        try:
            return await asyncio.wait_for(attempt, self.connect_timeout + _CLOSE_GRACE)
        except asyncio.TimeoutError:
            log.warn("Connecting to {host}:{port} took more than {timeout}s", host=self.host,
                     port=self.port, timeout=self.connect_timeout)
            return False

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Stop reconnecting and close, after in-flight handlers finish (up to ``timeout`` seconds).

        From inside a handler it does not wait (the handler itself is in flight).
        """
        timeout = check_number("timeout", timeout, minimum=0)
        session = self._session
        if session is None or session.loop.is_closed():
            return
        closing = session.stop(timeout)
        if not in_handler_of(self):
            await asyncio.shield(closing)

    async def run_forever(self) -> None:
        """Connect (unless connected or reconnecting) and wait until disconnect() or cancellation."""
        try:
            session = self._session
            if not self.connected and not (session is not None and session.retrying):
                await self.connect()
            assert self._session is not None  # connect() made one, or one was running
            await self._session.done.wait()
        except asyncio.CancelledError:
            log.info("Cancelled: disconnecting from the broker")
        await self.disconnect()

    def send_room_message(self, room_id: str, message: str) -> Awaitable[None]:
        """Send ``message`` to every client in ``room_id``; await it to wait until written."""
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> Awaitable[None]:
        """Send ``message`` to the one client ``client_id``; await it to wait until written."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast_message(self, message: str) -> Awaitable[None]:
        """Send ``message`` to every connected client; await it to wait until written."""
        return self._send(wire.broadcast_frame(message))

    # Extension requests: the broker must announce them (else NotSupportedError); see IBrokerConnection.

    def room_members(self, room_id: str) -> Awaitable[list[Context]]:
        """The Contexts of the clients in ``room_id`` now, from the broker; await the list.

        Every request below fails with :class:`~pystrands.NotSupportedError`
        when the broker does not announce the feature,
        :class:`~pystrands.BrokerRefused` when it refuses, ``TimeoutError``
        after 10 s without a reply, or :class:`~pystrands.NotConnectedError`.
        """
        return self._send(wire.room_members_request(room_id))

    def disconnect_client(self, client_id: str, code: int = 1000, reason: str = "") -> Awaitable[bool]:
        """Close ``client_id``'s WebSocket with ``code`` and ``reason``; await True if it was connected.

        ``ValueError`` here for a code other than 1000 or 3000-4999 (4000-4999
        are the application's) or a reason over 123 bytes of UTF-8.
        """
        return self._send(wire.disconnect_client_request(client_id, code, reason))

    def join_room(self, client_id: str, room_id: str) -> Awaitable[bool]:
        """Put ``client_id`` in ``room_id`` too; await True if the client is connected."""
        return self._send(wire.join_room_request(client_id, room_id))

    def leave_room(self, client_id: str, room_id: str) -> Awaitable[bool]:
        """Take ``client_id`` out of ``room_id``; await True if the client is connected."""
        return self._send(wire.leave_room_request(client_id, room_id))

    def set_metadata(self, client_id: str, metadata: Any) -> Awaitable[bool]:
        """Give ``client_id`` new ``metadata`` (JSON values, checked here) for later events; await True if connected."""
        return self._send(wire.set_metadata_request(client_id, metadata))

    def _send(self, frame: Outgoing) -> Awaitable[Any]:
        """Hand an encoded frame (or an extension request) to the broker connection.

        Typed for its use on a loop, where it is an asyncio Future. From a
        thread without a loop it is a concurrent Future (``AsyncioBackend.send``).
        """
        return cast("Awaitable[Any]", backend_of(self).send(frame))

    async def on_connection_request(self, request: ConnectionRequestContext) -> Any:
        """Accept every WebSocket client unless overridden."""
        return DefaultCallbacks.on_connection_request(self, request)

    async def on_new_connection(self, context: Context) -> None:
        """Log a new WebSocket client."""
        DefaultCallbacks.on_new_connection(self, context)

    async def on_message(self, message: str, context: Context) -> None:
        """Log a message."""
        DefaultCallbacks.on_message(self, message, context)

    async def on_disconnect(self, context: Context) -> None:
        """Log a WebSocket client that left."""
        DefaultCallbacks.on_disconnect(self, context)

    async def on_error(self, error: str, context: Context) -> None:
        """Log an error the broker reported."""
        DefaultCallbacks.on_error(self, error, context)


register_face(AsyncPyStrandsClient, _adapt)

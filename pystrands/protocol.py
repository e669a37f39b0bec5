"""The Twisted side of the wire: lines from the broker -> IBackend calls, and sends back.

:class:`BrokerProtocol` is one TCP connection to a broker. It frames lines,
decodes them with :mod:`pystrands.wire`, and hands each event to the
factory's :class:`~pystrands.dispatch.KeyedDispatcher` (in order per
WebSocket client, concurrent across clients); when handlers fall behind it
stops reading from the socket.

:class:`BrokerClientFactory` outlives connections: it walks the life
cycle of :mod:`pystrands.lifecycle` (its ``state``), retries as a
:class:`~pystrands.retry.RetryPolicy` says, and owns the dispatcher and
the buffer of sends made while no connection is up. It is the
``IBrokerConnection`` a backend sends through (``backend.broker``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ReconnectingClientFactory, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from ._internals import write_at_once
from .context import Context
from .dispatch import KeyedDispatcher
from .errors import BrokerRefused, NotConnectedError, NotSupportedError, ProtocolError, SendBufferFull
from .handshake import answer_connection_request
from .interfaces import IBackend, IBrokerConnection
from .lifecycle import ConnectionMachine, ConnectionState, Event
from .lines import LineSplitter
from .metrics import backend_metrics
from .ratelimit import ThrottledWarning
from .retry import RetryPolicy, worth_a_warning
from .settings import BackendSettings, check_number

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ._typing import IConnectedTransport

__all__ = [
    "CLOSE_TIMEOUT", "REQUEST_TIMEOUT", "BrokerClientFactory", "BrokerProtocol", "as_backend", "context_from_wire",
]

log = Logger()

#: Seconds an extension request waits for its ``reply`` before failing with ``TimeoutError``.
REQUEST_TIMEOUT = 10.0

#: Seconds from a connection during which requests wait for the broker's first frame (its ``hello``).
HELLO_WAIT = 2.0

#: Seconds a closing connection gets to close gracefully before it is aborted: a TLS close waits for
#: the broker's close_notify, which may never come.
CLOSE_TIMEOUT = 1.0

# Extension requests' ids: unique in the process, so unique on every connection.
_request_ids = itertools.count(1)

#: The broker's events that carry a ``context`` object (a client's, or for ``error`` the failed request's).
_CONTEXT_EVENTS = frozenset({wire.NEW_MESSAGE, wire.NEW_CONNECTION, wire.DISCONNECTED, wire.ERROR})
_NEW_MESSAGE = wire.NEW_MESSAGE  # read per frame: a module global is one lookup

_CALLBACKS = ("on_connection_request", "on_new_connection", "on_message", "on_disconnect", "on_error")


def as_backend(obj: object) -> IBackend:
    """``obj`` as an IBackend, or a ``TypeError`` that says why it is not one."""
    backend = IBackend(obj, None)
    if backend is None:
        raise TypeError(
            f"{obj!r} is not a backend: it neither provides IBackend nor has an adapter to it"
            " (subclass pystrands.Backend, PyStrandsClient or AsyncPyStrandsClient,"
            " or declare @implementer(IBackend))"
        )
    missing = [name for name in _CALLBACKS if not callable(getattr(backend, name, None))]
    if missing:
        raise TypeError(f"{obj!r} is not a backend: it lacks {', '.join(missing)}")
    return backend


def context_from_wire(obj: Any) -> Context:
    """A Context from a frame's ``context`` param, whatever shape it has.

    A client context gives its ids and the application's metadata (the
    reference broker's nested copy unwrapped). Anything else (the failed
    request of an ``error`` event: headers, url, remote_addr) becomes the
    metadata of a Context without ids, so nothing the broker said is lost.
    """
    context = _new_context(Context)  # per message: skip JSONModel's generic keyword loop
    # Anything but an object carries nothing. The ids are taken as sent (str in a client's events).
    fields: Any = obj if isinstance(obj, dict) else {}
    context.client_id = fields.get("client_id")
    context.room_id = fields.get("room_id")
    rooms = fields.get("rooms")
    if rooms is not None and isinstance(rooms, list):
        context._rooms = rooms
    metadata = fields.get("metadata", _ABSENT)
    if metadata is not _ABSENT:
        context.metadata = wire.unwrap_metadata(metadata)
    else:
        context.metadata = {key: value for key, value in fields.items() if key not in ("client_id", "room_id")}
    return context


_new_context = Context.__new__
_ABSENT = object()


class BrokerProtocol(LineReceiver):
    """One connection to a broker; see the module docstring."""

    delimiter = b"\n"
    factory: BrokerClientFactory
    #: Set by ``makeConnection`` before any method here runs.
    transport: IConnectedTransport

    def __init__(self, max_line_length: int) -> None:
        self.MAX_LENGTH = max_line_length
        self._splitter = LineSplitter(max_line_length, self.lineLengthExceeded)
        self._last_received = 0.0
        self._idle_call: Any = None
        self._reading_paused = False
        #: Frames sent while handling the data being read, written together after it.
        self._replies: list[bytes] | None = None
        #: The extension requests this broker announced in its ``hello`` (none until one comes).
        self.features: frozenset[str] = frozenset()
        #: False until the broker's first frame: its ``hello`` says the features, any other frame none.
        self._features_known = False
        self._connected_at = 0.0
        #: Requests made before the first frame, sent or failed by it (or by the HELLO_WAIT deadline).
        self._held: list[tuple[wire.Request, float, Deferred[Any]]] = []
        self._hello_timer: IDelayedCall | None = None
        #: Extension requests waiting for their ``reply``: request_id -> (action, Deferred, timer).
        self._pending: dict[str, tuple[str, Deferred[Any], IDelayedCall]] = {}
        #: Backpressure asked to pause reading while requests waited (replies must stay readable).
        self._pause_wanted = False
        self._lost = False
        #: The close began (:meth:`close`): what arrives is dropped; the call that aborts a close that hangs.
        self._closing = False
        self._abort_call: IDelayedCall | None = None

    # -- connection life cycle -------------------------------------------

    def connectionMade(self) -> None:
        """Start the idle timer, authenticate if there is a token, and tell the factory."""
        settings = self.factory.settings
        self._last_received = self._connected_at = self.factory.clock.seconds()
        if settings.idle_timeout:
            self._idle_call = self.factory.clock.callLater(settings.idle_timeout, self._check_idle)
        if settings.backend_token is not None:
            self.transport.write(wire.auth_frame(settings.backend_token))
        self.factory.protocol_connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the idle timer, tell the factory (which reconnects or not), then fail waiting requests.

        The factory learns first, so what an errback sends is buffered for
        the next connection (or refused) instead of written to this one.
        """
        self._lost = True
        self._pause_wanted = False
        for call in (self._idle_call, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._abort_call = None
        self.factory.protocol_disconnected(self, reason)
        why = reason.getErrorMessage()
        self.fail_pending(lambda: NotConnectedError(
            f"not connected to the broker: the connection was lost before the reply ({why})"))

    def close(self) -> None:
        """Close for good: gracefully, or aborted once the close has taken CLOSE_TIMEOUT seconds.

        Reading resumes, as a TLS close completes only once the broker's
        close_notify is read; whatever arrives meanwhile is dropped.
        """
        if self._lost or self._closing:
            return
        self._closing = True
        self.resume_reading()
        self.transport.loseConnection()
        if not self._lost:
            self._abort_call = self.factory.clock.callLater(CLOSE_TIMEOUT, self._abort_close)

    def _abort_close(self) -> None:
        self._abort_call = None
        log.warn("The connection to the broker at {destination} did not complete its close within {timeout:g}s;"
                 " aborted it", destination=self.factory.destination, timeout=CLOSE_TIMEOUT)
        self.transport.abortConnection()

    # -- extension requests ------------------------------------------------

    def request(self, request: wire.Request, timeout: float) -> Deferred[Any]:
        """Send an extension request; a Deferred of its reply's result.

        Fails at once with NotSupportedError (nothing written) when this
        broker did not announce the feature; later with BrokerRefused
        (``ok=false``), TimeoutError after ``timeout`` seconds, or
        NotConnectedError when the connection is lost first (at once on a
        lost connection).

        On a connection where no frame has arrived yet, the request waits
        for the first one (at most HELLO_WAIT seconds from the connection):
        a ``hello`` decides with its features, any other frame or the
        deadline fails it with NotSupportedError, nothing written.
        """
        if self._lost:
            return fail(NotConnectedError("not connected to the broker: the connection is lost"))
        answer: Deferred[Any] = Deferred(self._forget)
        if self._features_known:
            self._send(request, timeout, answer)
        else:
            clock = self.factory.clock
            deadline = self._connected_at + HELLO_WAIT
            if clock.seconds() >= deadline:
                return fail(_no_hello(request.action))
            self._held.append((request, timeout, answer))
            if self._hello_timer is None:
                self._hello_timer = clock.callLater(deadline - clock.seconds(), self._hello_missed)
        if not answer.called:  # it waits (not refused at once): its reply must stay readable
            self._keep_reading()
        return answer

    def _send(self, request: wire.Request, timeout: float, answer: Deferred[Any]) -> None:
        """Write ``request`` and wait for its reply in ``answer``, or fail it when not announced."""
        if request.action not in self.features:
            answer.errback(NotSupportedError(request.action))
            return
        request_id = f"x{next(_request_ids)}"
        timer = self.factory.clock.callLater(timeout, self._time_out, request_id, timeout)
        self._pending[request_id] = (request.action, answer, timer)
        self.write_frame(request.frame(request_id))

    def _forget(self, answer: Deferred[Any]) -> None:
        """A cancelled request: drop it, held or pending, with its timer."""
        self._held = [entry for entry in self._held if entry[2] is not answer]
        if not self._held:
            self._cancel_hello_timer()
        for request_id, (_, waiting, timer) in list(self._pending.items()):
            if waiting is answer:
                del self._pending[request_id]
                if timer.active():
                    timer.cancel()
        self._settled()

    def _time_out(self, request_id: str, timeout: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[1].errback(TimeoutError(f"{entry[0]}: no reply from the broker within {timeout:g}s"))
        self._settled()

    def fail_pending(self, error: Callable[[], Exception]) -> None:
        """Fail every request still waiting (for its reply or the ``hello``), each with its own ``error()``."""
        self._cancel_hello_timer()
        held, self._held = self._held, []
        pending, self._pending = self._pending, {}
        for _, _, answer in held:
            answer.errback(error())
        for _, answer, timer in pending.values():
            if timer.active():
                timer.cancel()
            answer.errback(error())
        self._settled()

    def _cancel_hello_timer(self) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None

    def _hello_missed(self) -> None:
        """HELLO_WAIT passed without a frame: the held requests fail."""
        self._hello_timer = None
        held, self._held = self._held, []
        for request, _, answer in held:
            answer.errback(_no_hello(request.action))
        self._settled()

    def _features_settled(self) -> None:
        """The first frame came: the connection proved itself; send the held requests this broker announced."""
        self._features_known = True
        self.factory.protocol_proved(self)
        self._cancel_hello_timer()
        held, self._held = self._held, []
        for request, timeout, answer in held:
            self._send(request, timeout, answer)
        self._settled()

    def _hello_received(self, params: dict[str, Any]) -> None:
        try:
            hello = wire.decode_hello(params)
        except ProtocolError:
            if not self._features_known:
                self._features_settled()  # a first frame all the same, announcing nothing
            raise
        self.features = hello.features
        log.info("The broker {broker} {version} (protocol {protocol}) supports {features}",
                 broker=hello.broker or "?", version=hello.version or "?", protocol=hello.protocol,
                 features=", ".join(sorted(hello.features)) or "no extensions")
        self._features_settled()

    def _reply_received(self, request_id: str, params: dict[str, Any]) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            log.warn("Skipped a reply to no pending request: {request_id!r}", request_id=request_id)
            return
        action, answer, timer = entry
        if timer.active():
            timer.cancel()
        try:
            reply = wire.decode_reply(params)
        except ProtocolError as exc:
            answer.errback(exc)
            self._settled()
            raise
        if reply.ok:
            answer.callback(reply.result)
        else:
            answer.errback(BrokerRefused(action, reply.error))
        self._settled()

    def _check_idle(self, last_look: bool = False) -> None:
        timeout = self.factory.settings.idle_timeout
        silent = self.factory.clock.seconds() - self._last_received
        if self._reading_paused or silent < timeout:
            # Paused reading means the broker's data waits in the socket: not silence.
            delay = timeout if self._reading_paused else timeout - silent
            self._idle_call = self.factory.clock.callLater(delay, self._check_idle)
            return
        if not last_look:
            # A handler on the reactor thread may have held it up while data
            # arrived: let the reactor read once more before judging.
            self._idle_call = self.factory.clock.callLater(0, self._check_idle, True)
            return
        self._idle_call = None
        log.warn("No data from the broker for {silent:.1f}s; dropping the connection", silent=silent)
        self.transport.abortConnection()

    def pause_reading(self) -> None:
        """Stop reading from the broker until :meth:`resume_reading`.

        While requests wait for a reply (or the ``hello``) reading goes on,
        or they would wait out their timeout: the pause is remembered and
        made once none waits, if the dispatcher is still busy then. The
        request timeout bounds what is read meanwhile. A closing connection
        reads on (see :meth:`close`).
        """
        if self._lost or self._closing:
            return
        if self._pending or self._held:
            self._pause_wanted = True
            return
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the broker again after :meth:`pause_reading`."""
        self._pause_wanted = False
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _keep_reading(self) -> None:
        """A request waits: read on (its reply must come through), pausing again once none waits."""
        if self._reading_paused and self.factory.state is not ConnectionState.STOPPING:
            self.resume_reading()
            self._pause_wanted = True

    def _settled(self) -> None:
        """A request stopped waiting: make a pause asked for meanwhile, once none waits."""
        if self._pause_wanted and not self._pending and not self._held:
            self._pause_wanted = False
            if self.factory.dispatcher.busy and self.factory.current is self:
                self.pause_reading()

    # -- framing ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Hand each complete line to ``lineReceived``, in linear time whatever the line sizes.

        Frames that handlers send meanwhile are written in one piece afterwards.
        Nothing is handed on once the connection is closing.
        """
        if self._closing:
            return
        self._last_received = self.factory.clock.seconds()
        replies: list[bytes] = []
        self._replies = replies
        try:
            for line in self._splitter.feed(data):
                self.lineReceived(line)
        finally:
            self._replies = None
            if replies:
                write_at_once(self.transport, b"".join(replies))

    def write_frame(self, frame: bytes) -> None:
        """Write an encoded frame: with the other replies to the data being read, or at once."""
        if self._replies is not None:
            self._replies.append(frame)
        else:
            self.transport.write(frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Skip a line longer than ``MAX_LENGTH`` up to its newline; keep the connection."""
        log.warn(
            "Skipped a line from the broker longer than {limit} bytes: {excerpt}",
            limit=self.MAX_LENGTH,
            excerpt=wire.excerpt(line[:200]),
        )

    # -- frames -> backend -----------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """Decode one line and hand its event on; a malformed one is logged and skipped."""
        try:
            request_id, action, params = wire.decode_parts(line)
            if (action in _CONTEXT_EVENTS and self._features_known) or not self._control_frame_received(
                    request_id, action, params, len(line)):
                self._event_received(request_id, action, params, len(line))
        except ProtocolError as exc:
            log.warn("Skipped a malformed frame from the broker ({why}): {excerpt}",
                     why=exc, excerpt=wire.excerpt(line))
        except Exception:
            # A backstop: no frame may cost the connection, even through a bug here.
            log.failure("Skipped a frame that could not be handled: {excerpt}", level=LogLevel.error,
                        excerpt=wire.excerpt(line))

    def _control_frame_received(self, request_id: str, action: str, params: dict[str, Any], size: int) -> bool:
        """Handle a frame that is no client event, or the first frame; False when a client event remains to run."""
        if action == wire.HEARTBEAT:
            if not self._features_known:
                self._features_settled()
            return True
        if action == wire.REPLY:
            self._reply_received(request_id, params)
            return True
        if action == wire.HELLO:
            self._hello_received(params)
            return True
        if not self._features_known:
            self._features_settled()  # the first frame is no hello: the broker announces nothing
        if action == wire.CONNECTION_REQUEST:
            factory = self.factory
            factory.submit_for[action](("request", request_id), size, answer_connection_request, factory.backend,
                                       factory.send_frame, request_id, params)
            return True
        if action not in _CONTEXT_EVENTS:
            log.debug("Skipped a frame with unknown action {action!r}", action=action)
            return True
        return False

    def _event_received(self, request_id: str, action: str, params: dict[str, Any], size: int) -> None:
        """Hand a client's event (new_message, new_connection, disconnected, error) to its handler."""
        raw_context = params.get("context")
        if type(raw_context) is not dict:
            # The reference broker always sends one: without it, a handler would answer nobody.
            self.factory._skipped_without_context(action=action, type=type(raw_context).__name__)
            return
        context = context_from_wire(raw_context)
        # One client's events run in order; without a usable id, the frame stands alone.
        client_id = context.client_id
        key = client_id if type(client_id) is str else ("frame", request_id)
        factory = self.factory
        backend = factory.backend
        dispatch = factory.submit_for[action]
        if action == _NEW_MESSAGE:
            message = params.get("message")
            if type(message) is not str and not isinstance(message, str):
                log.warn("Skipped a new_message frame whose message is not a string but {type}",
                         type=type(message).__name__)
                return
            dispatch(key, size, backend.on_message, message, context)
        elif action == wire.NEW_CONNECTION:
            dispatch(key, size, backend.on_new_connection, context)
        elif action == wire.DISCONNECTED:
            dispatch(key, size, backend.on_disconnect, context)
        else:
            error = params.get("error")
            if not isinstance(error, str):
                error = "" if error is None else str(error)
            dispatch(key, size, backend.on_error, error, context)


def _submit(factory: BrokerClientFactory, action: str) -> Callable[..., None]:
    """The dispatcher's submit for ``action``'s events, counted when the factory has metrics."""
    if factory.metrics is None:
        return factory.dispatcher.submit
    return factory.metrics.counting(factory.dispatcher.submit, action)


def _no_hello(feature: str) -> NotSupportedError:
    """NotSupportedError for a request that waited HELLO_WAIT seconds for a ``hello`` in vain."""
    return NotSupportedError(feature, f"no hello arrived on this connection within {HELLO_WAIT:g}s of connecting")


def _members(result: Any) -> list[Context]:
    """The Contexts of a ``room_members`` reply; ProtocolError when it is not a list."""
    if not isinstance(result, list):
        raise ProtocolError(f"room_members: the reply's result is not a list but {type(result).__name__}")
    return [context_from_wire(item) for item in result]


def _flag(result: Any) -> bool:
    """The bool of a ``disconnect_client``/``join_room``/``leave_room``/``set_metadata`` reply."""
    return result is True


#: How a reply's result becomes the caller's value, by action (a bool unless listed).
_RESULTS: dict[str, Callable[[Any], Any]] = {wire.ROOM_MEMBERS: _members}


def _result_of(result: Any, request: wire.Request) -> Any:
    """The caller's value of ``request``'s reply ``result``."""
    convert: Callable[[Any], Any] = _RESULTS.get(request.action, _flag)
    return convert(result)


def _describe(endpoint: IStreamClientEndpoint) -> str:
    """``host:port`` from an endpoint's public ``host`` and ``port``, else its repr."""
    host, port = getattr(endpoint, "host", None), getattr(endpoint, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"{host}:{port}"
    return repr(endpoint)


#: The states in which a connection is open or coming on its own.
_ACTIVE = frozenset({ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.WAITING_TO_RETRY})
#: The states after which no attempt comes.
_ENDING = frozenset({ConnectionState.STOPPING, ConnectionState.STOPPED})


@implementer(IBrokerConnection)
class BrokerClientFactory(ReconnectingClientFactory):
    """Connects a backend to a broker and keeps it connected; see the module docstring.

    Use :meth:`connect` with a client endpoint, and :meth:`stop` to end.
    Its life cycle is :mod:`pystrands.lifecycle`'s machine (``state``);
    when to retry is a :class:`~pystrands.retry.RetryPolicy` built, at
    :meth:`connect`, from ``ReconnectingClientFactory``'s attributes
    (``initialDelay``, ``maxDelay``, ``factor``, ``jitter``,
    ``maxRetries``, ``continueTrying``), which the settings fill in.

    ``retries`` counts the failures in a row. A connection resets it only
    once it has proved itself, with the broker's first frame (a ``hello``, a
    heartbeat or an event): a broker that accepts and closes at once (a
    wrong ``backend_token``) would otherwise be retried at the initial
    delay, with a warning each time, for ever. A connection that ends
    before its first frame is one more failure, like a refused attempt.
    Why the first frame and not some seconds up: it needs no timer, and
    only the broker's first word says that it took the backend.
    """

    # ReconnectingClientFactory is not generic: Twisted types its protocols as the bare shape.
    protocol = BrokerProtocol  # type: ignore[assignment]
    noisy = False
    #: Twisted's types come from its class body (None, an int); its docs say an IReactorTime and seconds.
    clock: IReactorTime  # type: ignore[assignment]
    maxDelay: float  # type: ignore[assignment]
    #: Seconds an extension request waits for its reply (on the factory's clock).
    request_timeout: float = REQUEST_TIMEOUT

    def __init__(self, backend: object, reactor: IReactorTime, settings: BackendSettings | None = None,
                 **options: Any) -> None:
        #: How the connection behaves (reconnects, limits, token).
        self.settings = settings if settings is not None else BackendSettings(**options)
        #: The backend events go to.
        self.backend = as_backend(backend)
        #: The reactor the connection runs on (``clock`` for ReconnectingClientFactory).
        self.reactor = self.clock = reactor
        self.initialDelay = self.delay = self.settings.reconnect_delay
        self.maxDelay = self.settings.max_reconnect_delay
        self.factor = self.settings.reconnect_backoff
        self.continueTrying = self.settings.auto_reconnect
        #: Runs the backend's callbacks: in order per client, concurrently across clients.
        self.dispatcher = KeyedDispatcher(
            self.settings.concurrency,
            self.settings.max_pending_events,
            self.settings.max_pending_bytes,
            on_busy=self._pause_reading,
            on_idle=self._resume_reading,
        )
        #: The open connection, None between connections.
        self.current: BrokerProtocol | None = None
        #: What logs call the broker (see :meth:`connect`).
        self.destination = "the broker"
        #: Counts into ``settings.metrics_registry`` (see :mod:`pystrands.metrics`); None without one.
        self.metrics = backend_metrics(self.settings.metrics_registry)
        #: The dispatcher's submit for each kind of event, counted when there are metrics.
        self.submit_for = {action: _submit(self, action) for action in (*_CONTEXT_EVENTS, wire.CONNECTION_REQUEST)}
        self._machine = ConnectionMachine()
        self._policy = RetryPolicy()
        self._endpoint: IStreamClientEndpoint | None = None
        self._attempt: Deferred[Any] | None = None
        self._retry_call: IDelayedCall | None = None
        self._buffer: deque[tuple[bytes, Deferred[None]]] = deque()
        self._attempt_waiters: list[Deferred[bool]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._draining: Deferred[None] | None = None
        #: Whether the open connection proved itself: the broker's first frame came (see :meth:`protocol_proved`).
        self._proved = False
        #: The last failure was a connection that ended unproven, logged at debug: so is the next connect.
        self._quiet_connect = False
        #: Why no connection is coming once stopped (set on giving up, and by stop()).
        self._ended_because = "the backend was stopped"
        #: Frames without a context object: skipped, the warning throttled (a broker could flood them).
        self._skipped_without_context = ThrottledWarning(
            log, reactor, "Skipped a {action} frame without a context object ({type})")
        self.backend.broker = self

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands (see :class:`~pystrands.lifecycle.ConnectionState`)."""
        return self._machine.state

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is open."""
        return self.current is not None

    @property
    def retrying(self) -> bool:
        """True while the factory keeps (re)connecting on its own: started, not stopped, retries on."""
        return bool(self.continueTrying) and self._machine.state in _ACTIVE

    @property
    def no_connection_reason(self) -> str | None:
        """None while a connection is open or coming; otherwise why not (the text sends fail with)."""
        state = self._machine.state
        if self.current is not None or state in _ACTIVE:
            return None
        if state is ConnectionState.NEVER_STARTED:
            return "the backend was never started"
        return self._ended_because

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.destination} {self._machine.state}>"

    # -- IBrokerConnection -----------------------------------------------

    def send_room_message(self, room_id: str, message: str) -> Deferred[None]:
        """Send ``message`` to every client in ``room_id`` (see :class:`IBrokerConnection`)."""
        return self._build_and_send(wire.room_message_frame, room_id, message)

    def send_private_message(self, client_id: str, message: str) -> Deferred[None]:
        """Send ``message`` to the client ``client_id`` (see :class:`IBrokerConnection`)."""
        return self._build_and_send(wire.private_message_frame, client_id, message)

    def broadcast_message(self, message: str) -> Deferred[None]:
        """Send ``message`` to every connected client (see :class:`IBrokerConnection`)."""
        return self._build_and_send(wire.broadcast_frame, message)

    def room_members(self, room_id: str) -> Deferred[list[Context]]:
        """The Contexts of the clients in ``room_id`` now (see :class:`IBrokerConnection`)."""
        return self._request(wire.room_members_request, room_id)

    def disconnect_client(self, client_id: str, code: int = 1000, reason: str = "") -> Deferred[bool]:
        """Close ``client_id``'s WebSocket with ``code`` and ``reason`` (see :class:`IBrokerConnection`)."""
        return self._request(wire.disconnect_client_request, client_id, code, reason)

    def join_room(self, client_id: str, room_id: str) -> Deferred[bool]:
        """Put ``client_id`` in ``room_id`` too (see :class:`IBrokerConnection`)."""
        return self._request(wire.join_room_request, client_id, room_id)

    def leave_room(self, client_id: str, room_id: str) -> Deferred[bool]:
        """Take ``client_id`` out of ``room_id`` (see :class:`IBrokerConnection`)."""
        return self._request(wire.leave_room_request, client_id, room_id)

    def set_metadata(self, client_id: str, metadata: Any) -> Deferred[bool]:
        """Give ``client_id`` new ``metadata`` (see :class:`IBrokerConnection`)."""
        return self._request(wire.set_metadata_request, client_id, metadata)

    def _request(self, build: Callable[..., wire.Request], *args: Any) -> Deferred[Any]:
        try:
            request = build(*args)
        except (TypeError, ValueError):
            return fail()
        return self.request(request)

    def request(self, request: wire.Request) -> Deferred[Any]:
        """Send a checked extension request; a Deferred of its result (Contexts for room_members, else a bool)."""
        return self.send_request(request).addCallback(_result_of, request)

    def send_request(self, request: wire.Request) -> Deferred[Any]:
        """Send a checked extension request on the open connection; a Deferred of the reply's raw result.

        Requests are not buffered across reconnects (the next broker may not
        support them): without a connection, or while stopping, it fails
        with NotConnectedError.
        """
        if not isinstance(request, wire.Request):
            return fail(TypeError(f"request must be a pystrands.wire.Request, not {type(request).__name__}"))
        current, state = self.current, self._machine.state
        if current is None or state is ConnectionState.STOPPING:
            reason = self._ended_because if state is ConnectionState.STOPPING else self.no_connection_reason
            if reason is None:
                reason = f"{state} (requests are not buffered)"
            return fail(NotConnectedError(f"not connected to the broker: {reason}"))
        return current.request(request, self.request_timeout)

    def _build_and_send(self, build: Any, *args: str) -> Deferred[None]:
        try:
            frame = build(*args)
        except TypeError:
            return fail()
        return self.send_frame(frame)

    def send_frame(self, frame: bytes) -> Deferred[None]:
        """Write an encoded frame now, or buffer it until the next connection.

        Fires once handed to the connection (to the transport, or to the
        replies written after the read being handled); fails with
        NotConnectedError when no connection is coming, or SendBufferFull
        past the buffer bound. While stopping, handlers still finishing
        send on the open connection.
        """
        current = self.current
        if current is not None:
            current.write_frame(frame)
            return succeed(None)
        reason = self.no_connection_reason
        if reason is not None:
            return fail(NotConnectedError(f"not connected to the broker: {reason}"))
        if len(self._buffer) >= self.settings.send_buffer_size:
            return fail(SendBufferFull(
                f"not connected to the broker, and {len(self._buffer)} sends already wait"
                f" for the reconnect (send_buffer_size={self.settings.send_buffer_size})"
            ))
        waiter: Deferred[None] = Deferred()
        self._buffer.append((frame, waiter))
        if self.metrics is not None:
            self.metrics.buffered_sends.inc()
        return waiter

    # -- life cycle: public calls ------------------------------------------

    def connect(self, endpoint: IStreamClientEndpoint, description: str | None = None) -> None:
        """Start connecting through ``endpoint``, retrying as the settings say.

        ``description`` names the broker in logs (e.g. ``localhost:8081``);
        without one, the endpoint's ``host`` and ``port``, else its repr.
        Once only: a second call raises RuntimeError.
        """
        if not IStreamClientEndpoint.providedBy(endpoint):
            raise TypeError(f"endpoint must provide IStreamClientEndpoint, not {endpoint!r}")
        if description is not None and not isinstance(description, str):
            raise TypeError(f"description must be a str, not {type(description).__name__}")
        if self._machine.state is not ConnectionState.NEVER_STARTED:
            raise RuntimeError(f"this factory was already started (it is {self._machine.state}); create a new one")
        self._endpoint = endpoint
        self.destination = description if description is not None else _describe(endpoint)
        self._policy = RetryPolicy(self.initialDelay, self.maxDelay, self.factor, self.jitter,
                                   retry=True, max_retries=self.maxRetries)
        self._machine.handle(Event.CONNECT)
        self._start_attempt()

    def next_attempt(self) -> Deferred[bool]:
        """Fires True on the next connection, False on the next failed attempt or on stop.

        After stop() (or once the factory gave up), False at once: no attempt is coming.
        """
        if self._machine.state in _ENDING:
            return succeed(False)
        waiter: Deferred[bool] = Deferred(self._attempt_waiters.remove)
        self._attempt_waiters.append(waiter)
        return waiter

    def stop(self, timeout: float = 5.0) -> Deferred[None]:
        """Stop reconnecting, let queued handlers finish (up to ``timeout``), then close.

        The close gets CLOSE_TIMEOUT seconds, then the connection is aborted:
        the stop ends within ``timeout + CLOSE_TIMEOUT`` whatever the
        transport (a TLS close may wait for ever for the broker). Buffered
        sends, waiting requests and an attempt under way fail or are
        cancelled at once. Every call's Deferred fires once stopped; while a
        stop is under way, a later call waits for it (the first timeout holds).
        """
        timeout = check_number("timeout", timeout, minimum=0)
        waiter: Deferred[None] = Deferred(self._stop_waiters.remove)
        self._stop_waiters.append(waiter)
        if self._machine.state is not ConnectionState.STOPPING:
            self._machine.handle(Event.STOP)
            self._begin_stop(timeout)
        return waiter

    def stopTrying(self) -> None:
        """Reconnect no more (``ReconnectingClientFactory``'s call): a retry waiting is dropped, giving up.

        The connection or attempt under way goes on; once it ends, nothing follows.
        """
        self.continueTrying = False
        if self._machine.state is ConnectionState.WAITING_TO_RETRY:
            self._cancel_retry()
            self._give_up(self._why_not_retrying())

    def buildProtocol(self, addr: Any) -> BrokerProtocol:  # type: ignore[override]  # see ``protocol``
        """A :class:`BrokerProtocol` with this factory's line limit; only once :meth:`connect` was called."""
        if self._machine.state is ConnectionState.NEVER_STARTED:
            raise RuntimeError("connect this factory with factory.connect(endpoint), which drives its"
                               " reconnects, not by handing it to a reactor or endpoint directly")
        protocol = self.protocol(self.settings.max_line_length)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """Nothing: a connector's attempts are not this factory's (see :meth:`buildProtocol`), none is retried."""

    clientConnectionLost = clientConnectionFailed

    # -- life cycle: what moves the machine --------------------------------

    def _start_attempt(self) -> None:
        assert self._endpoint is not None  # connect() set it before the machine left NEVER_STARTED
        try:
            attempt = self._endpoint.connect(self)
        except Exception:
            attempt = fail()
        self._attempt = attempt
        attempt.addCallbacks(self._attempt_ended, self._attempt_failed)

    def _attempt_ended(self, protocol: object) -> None:
        self._attempt = None

    def _attempt_failed(self, reason: Failure) -> None:
        self._attempt = None
        if self._machine.state is ConnectionState.STOPPING:
            self._machine.handle(Event.ATTEMPT_FAILED)
            self._fire_attempt_waiters(False)
            return
        self.retries += 1
        delay = self._policy.delay(self.retries) if self.continueTrying else None
        loud = worth_a_warning(self.retries)
        self._quiet_connect = False
        log.emit(LogLevel.warn if loud or delay is None else LogLevel.debug,
                 "Connecting to the broker at {destination} failed ({reason}); {next}",
                 destination=self.destination, reason=reason.getErrorMessage(), failures=self.retries,
                 next=self._next_step(delay))
        if delay is None:
            self._give_up(f"connecting failed and {self._why_not_retrying()}")
        else:
            self._machine.handle(Event.ATTEMPT_FAILED)
            self._wait_to_retry(delay)
        self._fire_attempt_waiters(False)

    def _why_not_retrying(self) -> str:
        if not self.settings.auto_reconnect:
            return "auto_reconnect is off"
        if not self.continueTrying:
            return "reconnecting was stopped (stopTrying)"
        return f"maxRetries={self.maxRetries} was reached"

    def _next_step(self, delay: float | None) -> str:
        if delay is None:
            return f"not retrying ({self._why_not_retrying()})"
        failures = f"{self.retries} failures in a row, " if self.retries > 1 else ""
        return f"{failures}retrying in {delay:.1f}s"

    def _wait_to_retry(self, delay: float) -> None:
        self.delay = delay
        self._retry_call = self.clock.callLater(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry_call = None
        self._machine.handle(Event.RETRY_DUE)
        self._start_attempt()

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def protocol_connected(self, protocol: BrokerProtocol) -> None:
        """Called by a protocol once connected: flush the buffer, start serving (or close it when stopping)."""
        if self._machine.handle(Event.ATTEMPT_SUCCEEDED) is not ConnectionState.CONNECTED:
            protocol.close()
            return
        self.current = protocol
        if self.metrics is not None:
            self.metrics.connected(self)
        self._proved = False
        failures = self.retries
        log.emit(LogLevel.debug if self._quiet_connect else LogLevel.info,
                 "Connected to the broker at {destination}{after}", destination=self.destination,
                 after=f" after {failures} failed attempt{'' if failures == 1 else 's'}" if failures else "")
        if self.dispatcher.busy:
            protocol.pause_reading()
        while self._buffer:
            frame, waiter = self._buffer.popleft()
            protocol.transport.write(frame)
            waiter.callback(None)
        self._fire_attempt_waiters(True)

    def protocol_proved(self, protocol: BrokerProtocol) -> None:
        """Called by a protocol on the broker's first frame: the connection works, the backoff starts over."""
        if protocol is self.current:
            self._proved = True
            self.retries = 0
            self.delay = self.initialDelay

    def protocol_disconnected(self, protocol: BrokerProtocol, reason: Failure) -> None:
        """Called by a protocol once its connection is gone: retry, give up, or finish a stop."""
        if protocol is not self.current:
            return
        self.current = None
        if self._machine.state is ConnectionState.STOPPING:
            self._machine.handle(Event.CONNECTION_LOST)
            if self._draining is None:  # handlers are done: this is the close the stop asked for
                self._machine.handle(Event.CLOSED)
                self._stopped()
            return
        # A connection that ended before the broker's first frame (a refused token) failed like an attempt.
        self.retries = 1 if self._proved else self.retries + 1
        delay = self._policy.delay(self.retries) if self.continueTrying else None
        loud = worth_a_warning(self.retries) or delay is None
        self._quiet_connect = not loud
        log.emit(LogLevel.warn if loud else LogLevel.debug,
                 "Lost the connection to the broker at {destination} ({reason}); {next}" if self._proved else
                 "The connection to the broker at {destination} ended before its first frame ({reason}),"
                 " a failed attempt (is backend_token right?); {next}",
                 destination=self.destination, reason=reason.getErrorMessage(), failures=self.retries,
                 next=self._next_step(delay))
        if delay is None:
            self._give_up(f"the connection is lost and {self._why_not_retrying()}")
        else:
            self._machine.handle(Event.CONNECTION_LOST)
            self._wait_to_retry(delay)

    def _give_up(self, why: str) -> None:
        self._machine.handle(Event.GIVE_UP)
        self._ended_because = why
        self.continueTrying = False
        self._stopped()

    def _begin_stop(self, timeout: float) -> None:
        """Entered STOPPING: nothing new starts; handlers get ``timeout`` seconds, then the connection closes."""
        self._ended_because = "the backend was stopped"
        self.continueTrying = False
        self._cancel_retry()
        if self._attempt is not None:
            self._attempt.cancel()
        self._fail_buffer("the backend was stopped")
        self._fire_attempt_waiters(False)
        protocol = self.current
        if protocol is not None:
            # No reply will be read any more: a handler waiting for one would wait out the timeout.
            protocol.fail_pending(lambda: NotConnectedError("not connected to the broker: the backend was stopped"))
            protocol.pause_reading()
        self._draining = drained = self.dispatcher.drained()
        timer = self.clock.callLater(timeout, drained.cancel)
        drained.addBoth(self._drained, timer, timeout)

    def _drained(self, result: object, timer: IDelayedCall, timeout: float) -> None:
        self._draining = None
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure) and result.check(CancelledError):
            log.warn("Stopping: handlers still running after {timeout}s; closing anyway", timeout=timeout)
        if self.current is not None:
            self.current.close()  # protocol_disconnected completes the stop
            return
        self._machine.handle(Event.CLOSED)
        self._stopped()

    def _stopped(self) -> None:
        """Entered STOPPED: nothing more is coming; every waiter learns it."""
        self._fail_buffer(self._ended_because)
        self._fire_attempt_waiters(False)
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fail_buffer(self, reason: str) -> None:
        while self._buffer:
            _, waiter = self._buffer.popleft()
            waiter.errback(NotConnectedError(f"not connected to the broker: {reason}"))

    def _fire_attempt_waiters(self, connected: bool) -> None:
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for waiter in waiters:
            waiter.callback(connected)

    # -- backpressure: the dispatcher pauses and resumes reading ---------------

    def _pause_reading(self) -> None:
        if self.current is not None:
            self.current.pause_reading()

    def _resume_reading(self) -> None:
        if self.current is not None and self._machine.state is not ConnectionState.STOPPING:
            self.current.resume_reading()

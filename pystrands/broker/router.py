"""The broker's switchboard: WebSocket events to backends, backend frames to WebSocket clients.

It knows nothing of sockets. The WebSocket side (``websocket.py``) and the
backend side (``backends.py``) call it; it calls back through the small
:class:`Client` and :class:`BackendLink` protocols. Routing is sticky: a
client's events all go to the backend that judged its handshake while that
backend stays connected; new clients go to the least-loaded backend.

Backpressure: a client whose backend is congested is told to wait
(:meth:`Broker.client_message` returns False) and is woken once that
backend drains, so a busy client slows down instead of breaking the link.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import wire
from ..settings import BackendSettings
from . import extensions
from .config import BrokerConfig
from .metrics import BrokerMetrics
from .queue import EventQueue
from .rooms import Membership, Rooms

__all__ = ["Admission", "BackendLink", "Broker", "Client", "Handshake", "HandshakeRefused"]

log = Logger()

HEARTBEAT_FRAME = wire.encode_frame(wire.HEARTBEAT, {}, "heartbeat")
NO_BACKEND = "no backend available to handle connection request"
MESSAGE_TOO_BIG = 1009


class BackendLink(Protocol):
    """What the router needs of a connected backend."""

    load: int

    @property
    def congested(self) -> bool:
        """True while the backend's socket cannot take more: its clients wait."""

    def send(self, frame: bytes) -> None:
        """Write a frame to the backend (held while its socket is full)."""

    def close(self) -> None:
        """Close once everything written so far has been sent."""


class Client(Protocol):
    """What the router needs of a WebSocket client."""

    admission: Admission

    def send_text(self, message: str) -> None:
        """Send a text message to the client."""

    def close(self, code: int, reason: str = "") -> None:
        """Start closing the WebSocket with a close code and reason."""

    def go_on(self) -> None:
        """Its backend drained: read and deliver again."""


@dataclass(frozen=True)
class Handshake:
    """A WebSocket handshake to be judged by a backend."""

    headers: dict[str, list[str]]
    url: str
    remote_addr: str
    query: dict[str, list[str]]

    def params(self) -> dict[str, Any]:
        """The ``connection_request`` params: the reference's keys plus ``query``."""
        return {"headers": self.headers, "url": self.url, "remote_addr": self.remote_addr,
                "query": self.query}

    def failed_context(self) -> dict[str, Any]:
        """The ``context`` of an ``error`` event about this handshake (no query, as the reference)."""
        return {"headers": self.headers, "url": self.url, "remote_addr": self.remote_addr}


@dataclass
class Admission:
    """A handshake the backend accepted: who the client is and where it goes.

    ``context`` is the client's context in its events, built once and kept
    up to date by the router when the client's rooms or metadata change.
    """

    client_id: str
    #: The client's first room (the backend's choice in its ``response``), even after it left it.
    room_id: str
    metadata: Any
    context: dict[str, Any] = field(init=False)
    _context_json: bytes | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.context = {"client_id": self.client_id, "room_id": self.room_id,
                        "metadata": self.metadata, "rooms": [self.room_id]}

    @property
    def context_json(self) -> bytes:
        """``context`` as JSON, encoded once and again only after a change: each message's event splices it in."""
        if self._context_json is None:
            self._context_json = orjson.dumps(self.context)
        return self._context_json

    def set_rooms(self, rooms: list[str]) -> None:
        """The client's rooms changed."""
        self.context["rooms"] = rooms
        self._context_json = None

    def set_metadata(self, metadata: Any) -> None:
        """The client's metadata changed."""
        self.metadata = self.context["metadata"] = metadata
        self._context_json = None


class HandshakeRefused(Exception):
    """A handshake that must end with an HTTP error ``status`` instead of an upgrade."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        #: The HTTP status the handshake is refused with.
        self.status = status
        #: Why, in the response's body.
        self.reason = reason


@dataclass
class _Pending:
    answer: Deferred[Admission]
    backend: BackendLink
    timeout: IDelayedCall
    #: Reserve the client id here on acceptance (not for a cluster node's handshake judged for another node).
    reserve: bool = True


class Broker:
    """Rooms, backends, the queue, and the rules between them."""

    def __init__(self, config: BrokerConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        #: The one place that holds membership (see :mod:`.rooms`).
        self.rooms: Membership[Client] = Rooms()
        self.queue: EventQueue[tuple[str | None, bytes, bool]] = EventQueue(config.queue_size)
        self.backends: list[BackendLink] = []
        self._assigned: dict[str, BackendLink] = {}
        self._waiting: dict[BackendLink, dict[str, Client]] = {}
        self._event_limit = BackendSettings.max_line_length
        self._pending: dict[str, _Pending] = {}
        self._heartbeat: Any = None
        self._drops_reported = 0
        #: Counts and the registry ``/metrics`` serves.
        self.metrics = BrokerMetrics(self)

    @property
    def ready(self) -> bool:
        """True while a backend can judge a handshake (for ``/readyz``): one is connected here."""
        return bool(self.backends)

    @property
    def unready_reason(self) -> str:
        """Why :attr:`ready` is False, in ``/readyz``'s answer."""
        return "no backend is connected"

    def cluster_gauges(self) -> dict[str, tuple[str, float]]:
        """A cluster node's state for ``/metrics``: name -> (help, value); nothing for a single broker."""
        return {}

    @property
    def handshaking(self) -> int:
        """Handshakes under way: waiting for a backend's answer, or accepted and not yet upgraded."""
        return len(self._pending) + self.rooms.claimed() - len(self.rooms)

    # -- life cycle ------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeats."""
        self._heartbeat = self.clock.callLater(self.config.heartbeat_interval, self._beat)

    def stop(self) -> None:
        """Stop the heartbeats and refuse the handshakes still waiting."""
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        for request_id in list(self._pending):
            self._refuse(request_id, 503, "the broker is stopping")

    def shutdown(self) -> Deferred[None]:
        """After :meth:`stop` and the connections' closing: let go of the rest (a cluster node's Redis)."""
        return succeed(None)

    def _beat(self) -> None:
        # callLater, not LoopingCall: LoopingCall() imports (so installs) the global reactor.
        self._heartbeat = self.clock.callLater(self.config.heartbeat_interval, self._beat)
        for backend in list(self.backends):
            backend.send(HEARTBEAT_FRAME)

    # -- backends ----------------------------------------------------------

    def backend_ready(self, backend: BackendLink) -> None:
        """A backend may now receive frames: greet it with ``hello``, then give it the queued events."""
        self.backends.append(backend)
        backend.send(extensions.HELLO_FRAME)
        if len(self.queue):
            log.info("Flushing {count} queued events to the new backend", count=len(self.queue))
        dropped = self.queue.dropped - self._drops_reported
        if dropped:
            self._drops_reported = self.queue.dropped
            log.warn("{dropped} events were dropped while no backend was connected (queue size {size});"
                     " {total} since the broker started", dropped=dropped, size=self.queue.size,
                     total=self.queue.dropped)
        for client_id, frame, final in self.queue.drain():
            self._route(client_id, frame, final)

    def backend_lost(self, backend: BackendLink) -> None:
        """Forget a backend: its clients move on at their next event, its handshakes get 503."""
        if backend not in self.backends:
            return
        self.backends.remove(backend)
        for client_id in [cid for cid, owner in self._assigned.items() if owner is backend]:
            del self._assigned[client_id]
        self.backend_drained(backend)  # its waiting clients go on, to another backend or the queue
        for request_id in [rid for rid, pending in self._pending.items() if pending.backend is backend]:
            self._refuse(request_id, 503, "the backend judging the handshake went away")

    def backend_drained(self, backend: BackendLink) -> None:
        """A congested backend caught up: the clients that waited for it go on."""
        for client in self._waiting.pop(backend, {}).values():
            client.go_on()

    def backend_frame(self, frame: wire.Frame, line: bytes, backend: BackendLink) -> None:
        """Act on one decoded frame from ``backend``; anything unusable is logged and skipped.

        Extension requests are answered to ``backend`` with one ``reply`` each.
        """
        action, params = frame.action, frame.params
        # JSON values as the backend sent them, each checked by _usable before use.
        room_id: Any
        conn_id: Any
        message: Any
        if action == wire.RESPONSE:
            self._answer(frame.request_id, params, line)
        elif action == wire.MESSAGE_TO_ROOM:
            room_id, message = params.get("room_id"), params.get("message")
            # The exact types first: orjson makes str, and _usable's keyword call costs more than a routing.
            if (type(room_id) is str and type(message) is str) or self._usable(line, room_id=room_id, message=message):
                members = self.rooms.members(room_id)
                for client in members:
                    client.send_text(message)
                self.metrics.sent_room += len(members)
        elif action == wire.MESSAGE_TO_CONNECTION:
            conn_id, message = params.get("conn_id"), params.get("message")
            if (type(conn_id) is str and type(message) is str) or self._usable(line, conn_id=conn_id, message=message):
                target = self.rooms.client(conn_id)
                if target is not None:
                    target.send_text(message)
                    self.metrics.sent_connection += 1
        elif action == wire.BROADCAST:
            message = params.get("message")
            if self._usable(line, message=message):
                everyone = self.rooms.everyone()
                for client in everyone:
                    client.send_text(message)
                self.metrics.sent_broadcast += len(everyone)
        elif action in _EXTENSIONS:
            self._extension(backend, frame, line)
        elif action != wire.AUTH:
            log.info("Skipped a frame with unknown action {action!r} from a backend", action=action)

    @staticmethod
    def _usable(line: bytes, **values: Any) -> bool:
        wrong = [name for name, value in values.items() if not isinstance(value, str)]
        if wrong:
            log.warn("Skipped a backend frame whose {names} must be a string: {excerpt}",
                     names=", ".join(wrong), excerpt=wire.excerpt(line))
        return not wrong

    # -- extension requests (docs/PROTOCOL-EXTENSIONS.md) ----------------------

    def _extension(self, backend: BackendLink, frame: wire.Frame, line: bytes) -> None:
        """Carry out one extension request and reply to it: ok with a result, or not ok with why.

        A handler may return a Deferred (a cluster node asking the others): the reply waits for it.
        """
        try:
            result = getattr(self, _EXTENSIONS[frame.action])(frame.params)
        except Exception as exc:
            self._refuse_request(backend, frame, line, exc)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(lambda value: self._reply(backend, frame, line, value),
                                lambda failure: self._refuse_request(backend, frame, line, failure.value))
        else:
            self._reply(backend, frame, line, result)

    def _refuse_request(self, backend: BackendLink, frame: wire.Frame, line: bytes, exc: BaseException) -> None:
        if isinstance(exc, extensions.BadParams):
            log.warn("Refused a backend's {action} request ({why}): {excerpt}", action=frame.action,
                     why=str(exc), excerpt=wire.excerpt(line))
            backend.send(extensions.refusal_frame(frame.request_id, str(exc)))
            return
        log.failure("A backend's {action} request failed: {excerpt}", Failure(exc, type(exc), exc.__traceback__),
                    action=frame.action,
                    excerpt=wire.excerpt(line))
        backend.send(extensions.refusal_frame(frame.request_id, "the broker failed to carry it out"))

    def _reply(self, backend: BackendLink, frame: wire.Frame, line: bytes, result: Any) -> None:
        reply = extensions.reply_frame(frame.request_id, result)
        if len(reply) > self._event_limit:  # the library would skip it, and the request time out
            why = f"the reply would be {len(reply)} bytes, over the backends' line limit"
            log.warn("Refused a backend's {action} request ({why}): {excerpt}", action=frame.action,
                     why=why, excerpt=wire.excerpt(line))
            reply = extensions.refusal_frame(frame.request_id, why)
        backend.send(reply)

    def _room_members(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        room_id = extensions.room_params(params)
        return [client.admission.context for client in self.rooms.members(room_id)]

    def _disconnect_client(self, params: dict[str, Any]) -> bool:
        client_id, code, reason = extensions.close_params(params)
        client = self.rooms.client(client_id)
        if client is None:
            return False
        client.close(code, reason)
        return True

    def _join_room(self, params: dict[str, Any]) -> bool:
        client_id, room_id = extensions.membership_params(params)
        return self._new_rooms(client_id, self.rooms.join(client_id, room_id))

    def _leave_room(self, params: dict[str, Any]) -> bool:
        client_id, room_id = extensions.membership_params(params)
        return self._new_rooms(client_id, self.rooms.leave(client_id, room_id))

    def _new_rooms(self, client_id: str, rooms: list[str] | None) -> bool:
        client = self.rooms.client(client_id) if rooms is not None else None
        if client is None or rooms is None:
            return False
        client.admission.set_rooms(rooms)
        return True

    def _set_metadata(self, params: dict[str, Any]) -> bool:
        client_id, metadata = extensions.metadata_params(params)
        client = self.rooms.client(client_id)
        if client is None:
            return False
        client.admission.set_metadata(metadata)
        return True

    # -- handshakes ----------------------------------------------------------

    def request_connection(self, handshake: Handshake) -> Deferred[Admission]:
        """Ask a backend about a handshake; fails with HandshakeRefused (status, reason)."""
        if not self.backends:
            self._route(None, wire.encode_frame(
                wire.ERROR, {"error": NO_BACKEND, "context": handshake.failed_context()}), True)
            self.metrics.handshake("unavailable")
            return fail(HandshakeRefused(503, "no backend is connected"))
        return self._ask_backend(handshake.params())

    def _ask_backend(self, params: dict[str, Any], reserve: bool = True) -> Deferred[Admission]:
        """Send a ``connection_request`` to the least-loaded backend; its answer, or HandshakeRefused."""
        backend = self._least_loaded()
        request_id = str(uuid.uuid4())
        frame = wire.encode_frame(wire.CONNECTION_REQUEST, params, request_id)
        answer: Deferred[Admission] = Deferred()
        timeout = self.clock.callLater(self.config.auth_timeout, self._refuse, request_id, 403,
                                       "the backend did not answer in time")
        self._pending[request_id] = _Pending(answer, backend, timeout, reserve)
        backend.load += 1
        backend.send(frame)
        return answer

    def _refuse(self, request_id: str, status: int, reason: str) -> None:
        pending = self._pending.pop(request_id)
        self.metrics.handshake_refused(status, timed_out=not pending.timeout.active())
        if pending.timeout.active():
            pending.timeout.cancel()
        else:
            log.warn("No answer to connection request {request_id} within {seconds}s; refused",
                     request_id=request_id, seconds=self.config.auth_timeout)
        pending.backend.load -= 1
        pending.answer.errback(HandshakeRefused(status, reason))

    def _answer(self, request_id: str, params: dict[str, Any], line: bytes) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            log.warn("Skipped a response to an unknown or expired request: {excerpt}",
                     excerpt=wire.excerpt(line))
            return
        self.metrics.round_trip.observe(self.clock.seconds() + self.config.auth_timeout - pending.timeout.getTime())
        # JSON values as the backend sent them, checked by _usable before use.
        client_id: Any
        room_id: Any
        client_id, room_id = params.get("client_id"), params.get("room_id")
        if params.get("accepted") is not True:
            self._refuse(request_id, 403, "rejected by the backend")
        elif not self._usable(line, client_id=client_id, room_id=room_id):
            self._refuse(request_id, 403, "the backend's answer was not usable")
        elif not self._take_id(client_id, pending.reserve):
            log.warn("Refused a handshake: client_id {client_id!r} is already connected",
                     client_id=client_id)
            self._refuse(request_id, 409, "client_id already in use")
        else:
            del self._pending[request_id]
            pending.timeout.cancel()
            metadata = params.get("metadata")
            self._assigned[client_id] = pending.backend
            pending.answer.callback(Admission(client_id, room_id, {} if metadata is None else metadata))

    def _take_id(self, client_id: str, reserve: bool) -> bool:
        """True if an accepted ``client_id`` may be booked here: reserved now (for a client of this
        broker); else (a cluster node's handshake judged for another node) not booked on a backend here
        already, by a client of this node or of another: that client's events would move backends."""
        if reserve:
            return self.rooms.reserve(client_id)
        return client_id not in self._assigned

    def abandon(self, admission: Admission) -> None:
        """An accepted handshake whose client went away before the upgrade."""
        self.rooms.release(admission.client_id)
        self._unassign(admission.client_id)

    # -- WebSocket clients ---------------------------------------------------

    def client_connected(self, client: Client) -> None:
        """A client's WebSocket is open: it joins its room, and its backend gets ``new_connection``."""
        admission = client.admission
        self.rooms.add(admission.client_id, admission.room_id, client)
        self._route(admission.client_id,
                    wire.encode_frame(wire.NEW_CONNECTION, {"context": admission.context}), False)

    def client_message(self, client: Client, message: str) -> bool:
        """Route a client's message; False when the client must wait for its backend (see go_on)."""
        self.metrics.messages_in += 1
        admission = client.admission
        frame = wire.new_message_frame(message, admission.context_json)
        if len(frame) > self._event_limit:
            log.warn("Closed WebSocket client {client_id!r}: its message makes an event of {size} bytes,"
                     " over the backends' line limit ({limit})", client_id=admission.client_id,
                     size=len(frame), limit=self._event_limit)
            client.close(MESSAGE_TOO_BIG, "message too big")
            return True
        backend = self._route(admission.client_id, frame, False)
        if backend is None or not backend.congested:
            return True
        self._waiting.setdefault(backend, {})[admission.client_id] = client
        return False

    def client_disconnected(self, client: Client) -> None:
        """A client's WebSocket is gone: it leaves its rooms, and its backend gets ``disconnected``.

        That event's context lists the rooms the client was in when it went.
        """
        admission = client.admission
        self.rooms.remove(admission.client_id)
        backend = self._assigned.get(admission.client_id)
        if backend is not None:
            self._waiting.get(backend, {}).pop(admission.client_id, None)
        self._route(admission.client_id,
                    wire.encode_frame(wire.DISCONNECTED, {"context": admission.context}), True)

    # -- routing -------------------------------------------------------------

    def _route(self, client_id: str | None, frame: bytes, final: bool) -> BackendLink | None:
        """Send an event to the client's backend, or queue it when there is none; that backend.

        ``final`` marks a client's last event, after which its backend is free of it.
        """
        if not self.backends:
            dropped_before = self.queue.dropped
            self.queue.put((client_id, frame, final))
            first_drop_since_report = dropped_before == self._drops_reported
            if self.queue.dropped > dropped_before and first_drop_since_report:
                log.warn("No backend connected and the event queue is full (queue size {size}):"
                         " dropping the oldest events until a backend connects", size=self.queue.size)
            return None
        backend = self._assigned.get(client_id) if client_id is not None else None
        if backend is None:
            backend = self._least_loaded()
            if client_id is not None and not final:
                self._assigned[client_id] = backend
                backend.load += 1
        elif final and client_id is not None:  # it is: the backend was found by it
            self._unassign(client_id)
        backend.send(frame)
        return backend

    def _least_loaded(self) -> BackendLink:
        return min(self.backends, key=lambda link: link.load)

    def _unassign(self, client_id: str) -> None:
        backend = self._assigned.pop(client_id, None)
        if backend is not None:
            backend.load -= 1


#: The extension requests the router answers: action (each announced in ``hello``) -> the method
#: (by name, so that a cluster node's router can answer them cluster-wide).
_EXTENSIONS: dict[str, str] = {
    extensions.ROOM_MEMBERS: "_room_members",
    extensions.DISCONNECT_CLIENT: "_disconnect_client",
    extensions.JOIN_ROOM: "_join_room",
    extensions.LEAVE_ROOM: "_leave_room",
    extensions.SET_METADATA: "_set_metadata",
}

"""The interfaces between the Twisted core and the application.

The core calls an :class:`IBackend`; every face of the library (blocking,
asyncio, decorators, a plain object under ``twistd``) becomes one through a
zope adapter, so the core never asks which face it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .context import ConnectionRequestContext, Context

__all__ = ["IBackend", "IBrokerConnection"]


class IBrokerConnection(Interface):
    """The link to the broker that a backend sends through.

    It outlives single TCP connections: sends made while reconnecting are
    buffered (within a bound) and written after the reconnect.
    """

    connected = Attribute("True while a TCP connection to the broker is open.")
    reactor = Attribute("The reactor the connection runs on; call its methods from its thread only.")

    def send_room_message(room_id: str, message: str) -> Deferred[None]:
        """Send ``message`` (str) to every client in ``room_id`` (str).

        Returns a Deferred that fires once the frame is handed to the
        transport, or fails with ``TypeError``, ``NotConnectedError`` or
        ``SendBufferFull``.
        """

    def send_private_message(client_id: str, message: str) -> Deferred[None]:
        """Send ``message`` (str) to the client ``client_id`` (str); a Deferred as above."""

    def broadcast_message(message: str) -> Deferred[None]:
        """Send ``message`` (str) to every connected client; a Deferred as above."""

    # Extension requests (docs/PROTOCOL-EXTENSIONS.md). Each fails at once with
    # NotSupportedError, nothing written, when the broker did not announce it in
    # its ``hello``; with BrokerRefused when the broker answers ok=false; with
    # TimeoutError after 10 s without a reply; with NotConnectedError when the
    # connection is lost first or there is none (requests are not buffered).

    def room_members(room_id: str) -> Deferred[list[Context]]:
        """The Contexts (with ``rooms``) of the clients in ``room_id`` (str) now; [] for an unknown room."""

    def disconnect_client(client_id: str, code: int = 1000, reason: str = "") -> Deferred[bool]:
        """Close the client's WebSocket with ``code`` (1000 or 3000-4999) and ``reason`` (<= 123 UTF-8 bytes).

        True if the client was connected (its ``on_disconnect`` follows as
        usual), False if there is no such client. A bad code or reason is a
        ``ValueError`` (a failed Deferred), before anything is sent.
        """

    def join_room(client_id: str, room_id: str) -> Deferred[bool]:
        """Put the client in ``room_id`` too; True if the client is connected, False otherwise."""

    def leave_room(client_id: str, room_id: str) -> Deferred[bool]:
        """Take the client out of ``room_id``; True if the client is connected, False otherwise."""

    def set_metadata(client_id: str, metadata: Any) -> Deferred[bool]:
        """Replace the client's metadata (any JSON value) for its later events; True if connected."""


class IBackend(Interface):
    """What the core calls for each event from the broker.

    Each callback may return a plain value, a Deferred or a coroutine; the
    core waits for it before giving the same WebSocket client's next event.
    """

    broker = Attribute(
        "An IBrokerConnection, set by the core before the first callback and"
        " valid across reconnects, the way Twisted sets protocol.transport."
    )

    def on_connection_request(request: ConnectionRequestContext) -> object:
        """Judge a handshake (a ConnectionRequestContext).

        Return True/False to accept/reject, or None to use
        ``request.accepted``. ``request.context`` (room_id, metadata) is
        what the accepted client gets.
        """

    def on_new_connection(context: Context) -> object:
        """A client (Context) completed its handshake and is in its room."""

    def on_message(message: str, context: Context) -> object:
        """A client (Context) sent ``message`` (str)."""

    def on_disconnect(context: Context) -> object:
        """A client (Context) closed its WebSocket."""

    def on_error(error: str, context: Context) -> object:
        """The broker reports ``error`` (str); ``context`` is a Context built
        from what the frame carried (the failed request's url and address for
        the reference broker's ``no backend available`` error)."""

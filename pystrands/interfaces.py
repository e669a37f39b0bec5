"""The interfaces between the Twisted core and the application.

The core calls an :class:`IBackend`; every face of the library (blocking,
asyncio, decorators, a plain object under ``twistd``) becomes one through a
zope adapter, so the core never asks which face it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

"""Backend, the base class of Twisted-native backends, and the documented default callbacks."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from .context import ConnectionRequestContext, Context
from .interfaces import IBackend, IBrokerConnection

__all__ = ["Backend", "DefaultCallbacks"]

log = Logger()


class DefaultCallbacks:
    """The documented defaults: accept every connection, log the other events."""

    def on_connection_request(self, request: ConnectionRequestContext) -> Any:
        """Accept every WebSocket client unless overridden."""
        return True

    def on_new_connection(self, context: Context) -> Any:
        """Log a new WebSocket client."""
        log.debug("New connection: {client_id} in {room_id}", client_id=context.client_id,
                  room_id=context.room_id)

    def on_message(self, message: str, context: Context) -> Any:
        """Log a message."""
        log.debug("Message from {client_id} in {room_id}", client_id=context.client_id,
                  room_id=context.room_id)

    def on_disconnect(self, context: Context) -> Any:
        """Log a WebSocket client that left."""
        log.debug("Disconnected: {client_id} from {room_id}", client_id=context.client_id,
                  room_id=context.room_id)

    def on_error(self, error: str, context: Context) -> Any:
        """Log an error the broker reported."""
        log.warn("Broker reported an error: {error}", error=error)


@implementer(IBackend)
class Backend(DefaultCallbacks):
    """Subclass and override the callbacks you need; send with ``self.broker``.

    Callbacks may return a value, a Deferred or a coroutine (``async def``
    awaiting Deferreds); the next event of the same client waits for it.
    """

    #: The connection to send through: set by the core before the first callback.
    broker: IBrokerConnection

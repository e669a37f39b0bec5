"""Backend: a base class for Twisted-native backends, with the documented defaults."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from .context import ConnectionRequestContext, Context
from .interfaces import IBackend, IBrokerConnection

__all__ = ["Backend"]

log = Logger()


@implementer(IBackend)
class Backend:
    """Subclass and override the callbacks you need; send with ``self.broker``.

    Callbacks may return a value, a Deferred or a coroutine (``async def``
    awaiting Deferreds). The defaults accept every connection and log events.
    """

    broker: IBrokerConnection

    def on_connection_request(self, request: ConnectionRequestContext) -> Any:
        return True

    def on_new_connection(self, context: Context) -> Any:
        log.debug("New connection: {client_id} in {room_id}", client_id=context.client_id,
                  room_id=context.room_id)

    def on_message(self, message: str, context: Context) -> Any:
        log.debug("Message from {client_id}", client_id=context.client_id)

    def on_disconnect(self, context: Context) -> Any:
        log.debug("Disconnected: {client_id}", client_id=context.client_id)

    def on_error(self, error: str, context: Context) -> Any:
        log.warn("Broker reported an error: {error}", error=error)

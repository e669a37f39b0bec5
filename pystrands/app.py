"""PyStrands: the decorator face, for a backend written as a few functions.

For example::

    app = PyStrands("localhost", 8081)

    @app.on_message
    def echo(message, context):
        app.send_room_message(context.room_id, message)

    app.run()                 # blocking; or: await app.run_async()

It runs on the other two faces' machinery: ``run()`` on a
:class:`PyStrandsClient`, ``run_async()`` on an :class:`AsyncPyStrandsClient`,
with each registered function in place of the callback of the same name.
Under ``run()`` functions run where the blocking face runs handlers (its I/O
thread, or worker threads with ``concurrency=N``), an ``async def`` one on a
loop of its own there; under ``run_async()`` an ``async def`` function runs on
the caller's loop and a plain one in a thread. An event without a
registered function gets the default behaviour (connections are accepted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import wire
from ._adapter import FaceBackend, Outgoing, backend_of, not_sent, register_face
from ._bridges import awaitable_here
from ._dropped import dropped_sends_of
from ._parameters import ConnectionParameters
from .async_client import AsyncPyStrandsClient
from .client import PyStrandsClient
from .logbridge import bridge_to_stdlib

__all__ = ["PyStrands"]

_Handler = TypeVar("_Handler", bound=Callable[..., Any])
_Face = TypeVar("_Face", PyStrandsClient, AsyncPyStrandsClient)


class PyStrands(ConnectionParameters):
    """A backend made of decorated functions; see the module docstring."""

    def _init_state(self) -> None:
        bridge_to_stdlib()  # as the faces do: a send before run() warns through stdlib logging
        self._handlers: dict[str, Callable[..., Any]] = {}
        #: The face running the app (a PyStrandsClient or AsyncPyStrandsClient), None before a run.
        self.client: PyStrandsClient | AsyncPyStrandsClient | None = None

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the broker is open."""
        return self.client is not None and self.client.connected

    def _register(self, name: str, handler: _Handler) -> _Handler:
        if not callable(handler):
            raise TypeError(f"@{name} needs a function, not {type(handler).__name__}")
        self._handlers[name] = handler
        return handler

    def on_connection_request(self, handler: _Handler) -> _Handler:
        """Register ``handler(request)``: return True/False to accept/reject a WebSocket client."""
        return self._register("on_connection_request", handler)

    def on_new_connection(self, handler: _Handler) -> _Handler:
        """Register ``handler(context)``, called when a client is connected and in its room."""
        return self._register("on_new_connection", handler)

    def on_message(self, handler: _Handler) -> _Handler:
        """Register ``handler(message, context)``, called for each message of a client."""
        return self._register("on_message", handler)

    def on_disconnect(self, handler: _Handler) -> _Handler:
        """Register ``handler(context)``, called when a client has left."""
        return self._register("on_disconnect", handler)

    def on_error(self, handler: _Handler) -> _Handler:
        """Register ``handler(error, context)``, called for an error the broker reports."""
        return self._register("on_error", handler)

    def _client(self, face: type[_Face], adapt: Callable[[Callable[..., Any]], Callable[..., Any]]) -> _Face:
        """A new ``face`` with this app's settings and handlers (each passed through ``adapt``)."""
        client = face(self.host, self.port, self.auto_reconnect, self.reconnect_delay,
                      self.max_reconnect_delay, self.reconnect_backoff, **self._settings_overrides)
        for name, handler in self._handlers.items():
            setattr(client, name, adapt(handler))
        self.client = client
        dropped_sends_of(self).flush()  # what was dropped before the run and not yet told; the client counts on
        return client

    def run(self) -> None:
        """Connect and serve until Ctrl-C or ``app.client.disconnect()`` (blocking)."""
        self._client(PyStrandsClient, _as_it_is).run_forever()

    async def run_async(self) -> None:
        """Connect and serve on the running loop until cancelled or ``await app.client.disconnect()``."""
        await self._client(AsyncPyStrandsClient, _off_the_loop).run_forever()

    def send_room_message(self, room_id: str, message: str) -> Any:
        """Send ``message`` to every client in ``room_id``; a future (awaitable on a loop) of True once written.

        Before ``run()``, or with no connection coming, the send is dropped
        with a warning, as the faces do (see PyStrandsClient.send_room_message).
        """
        return self._send(wire.room_message_frame(room_id, message))

    def send_private_message(self, client_id: str, message: str) -> Any:
        """Send ``message`` to the one client ``client_id``; a future of True/False, as ``send_room_message``."""
        return self._send(wire.private_message_frame(client_id, message))

    def broadcast(self, message: str) -> Any:
        """Send ``message`` to every connected client; a future of True/False, as ``send_room_message``."""
        return self._send(wire.broadcast_frame(message))

    broadcast_message = broadcast

    # Extension requests, as on the running face (see PyStrandsClient and IBrokerConnection).

    def room_members(self, room_id: str) -> Any:
        """The Contexts of the clients in ``room_id`` now; a future of the list, awaitable on a loop."""
        return self._send(wire.room_members_request(room_id))

    def disconnect_client(self, client_id: str, code: int = 1000, reason: str = "") -> Any:
        """Close ``client_id``'s WebSocket with ``code`` (1000 or 3000-4999) and ``reason``; a future of a bool."""
        return self._send(wire.disconnect_client_request(client_id, code, reason))

    def join_room(self, client_id: str, room_id: str) -> Any:
        """Put ``client_id`` in ``room_id`` too; a future of True if the client is connected."""
        return self._send(wire.join_room_request(client_id, room_id))

    def leave_room(self, client_id: str, room_id: str) -> Any:
        """Take ``client_id`` out of ``room_id``; a future of True if the client is connected."""
        return self._send(wire.leave_room_request(client_id, room_id))

    def set_metadata(self, client_id: str, metadata: Any) -> Any:
        """Give ``client_id`` new ``metadata`` (JSON values) for its later events; a future of a bool."""
        return self._send(wire.set_metadata_request(client_id, metadata))

    def _send(self, frame: Outgoing) -> Any:
        """Through the running face (before a run: dropped, False); on a loop the result is always awaitable."""
        if self.client is None:
            return awaitable_here(not_sent(self, frame, "call run() or run_async() first"))
        future = self.client._send(frame)
        if isinstance(future, concurrent.futures.Future):  # the blocking face's, maybe sent from a loop
            return awaitable_here(future)
        return future


def _as_it_is(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` as the blocking face wants it: it runs any function where it runs handlers."""
    return handler


def _off_the_loop(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` as the asyncio face wants it: coroutine functions as they are, others in a thread."""
    if inspect.iscoroutinefunction(handler):
        return handler

    @functools.wraps(handler)  # a failure report names the user's function
    def in_a_thread(*args: Any) -> Awaitable[Any]:
        return asyncio.to_thread(handler, *args)

    return in_a_thread


def _app_backend(app: PyStrands) -> FaceBackend:
    """The app as an IBackend (for twistd): its handlers on the blocking face's machinery."""
    client = app.client
    if not isinstance(client, PyStrandsClient):
        client = app._client(PyStrandsClient, _as_it_is)
    return backend_of(client)


register_face(PyStrands, _app_backend)

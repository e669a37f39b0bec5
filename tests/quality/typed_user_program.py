"""A user's backend program, written with every documented face and fully annotated.

``tests/quality/test_types_and_lint.py`` checks it with ``mypy --strict`` as a
user's own code (``user-mypy.ini``: strict, plus mypy-zope, which any typed
code using zope.interface needs), so a change that makes the public API
untyped, or typed against its documentation, fails there. The test imports
it too; nothing runs at import: each face starts only from ``main()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from zope.interface import implementer

from pystrands import (
    AsyncPyStrandsClient,
    Backend,
    BackendService,
    BrokerRefused,
    ConnectionRequestContext,
    Context,
    IBackend,
    IBrokerConnection,
    NotSupportedError,
    PyStrands,
    PyStrandsClient,
)
from pystrands.broker import BrokerConfig, BrokerService
from pystrands.context import ConnectionRequestContext as DocumentedRequestContext  # the documented module path

# -- Context and ConnectionRequestContext --------------------------------------------


def first_header(request: ConnectionRequestContext, name: str) -> str | None:
    """The first value of a request header, as the context reference reads headers."""
    values: list[str] = request.headers.get(name, [])
    return values[0] if values else None


def admit(request: DocumentedRequestContext) -> bool:
    """Judge a handshake: a token in a header or the query string; room from the URL."""
    token = first_header(request, "Authorization") or next(iter(request.query.get("token", [])), None)
    if token != "Bearer valid-token" and token != "valid-token":
        request.accepted = False
        return request.accepted
    context: Context = request.context
    context.room_id = request.url.strip("/") or "lobby"
    context.metadata = {"user": context.client_id, "ip": request.remote_addr}
    return True


def display_name(context: Context) -> str:
    """What later callbacks read back from the metadata stored at the handshake."""
    name: Any = context.metadata.get("user", "anonymous")
    return str(name)


def round_trip(context: Context) -> Context:
    """``from_json(to_json(x))`` gives an equal Context."""
    data: dict[str, Any] = context.to_json()
    copy = Context.from_json(data)
    assert copy == context
    return copy


def request_from_dict(data: dict[str, Any]) -> ConnectionRequestContext:
    """A ConnectionRequestContext built as ``from_json`` documents it."""
    return ConnectionRequestContext.from_json(data)


EXAMPLE_CONTEXT = Context(client_id="550e8400-e29b-41d4-a716-446655440000", room_id="room1",
                          metadata={"user": "alice"})


# -- PyStrandsClient: the blocking face ----------------------------------------------


def report_dropped(sent: concurrent.futures.Future[bool]) -> None:
    """A send's Future gives False when nothing could carry it (not connected, or too many waiting)."""
    if sent.result() is False:
        print("not sent: no connection to the broker", file=sys.stderr)


class ChatServer(PyStrandsClient):
    """The client reference's complete example, with each callback annotated."""

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        return admit(request)

    def on_new_connection(self, context: Context) -> None:
        self.send_private_message(context.client_id, f"Welcome to {context.room_id}!")
        self.send_room_message(context.room_id, f"User {display_name(context)} joined")

    def on_message(self, message: str, context: Context) -> None:
        if message == "!announce":
            sent: concurrent.futures.Future[bool] = self.broadcast_message("Important system update!")
            sent.add_done_callback(report_dropped)
            return
        self.send_room_message(context.room_id, f"{display_name(context)}: {message}")

    def on_disconnect(self, context: Context) -> None:
        self.send_room_message(context.room_id, f"User {context.client_id} left")

    def on_error(self, error: str, context: Context) -> None:
        print(f"Error for {context.client_id}: {error}", file=sys.stderr)


def client_settings(client: PyStrandsClient) -> tuple[str, int, bool, bool, float, float, float]:
    """The documented attributes of a client."""
    return (client.host, client.port, client.connected, client.auto_reconnect, client.reconnect_delay,
            client.max_reconnect_delay, client.reconnect_backoff)


def run_blocking() -> None:
    """Connect, serve until Ctrl-C, disconnect."""
    client = ChatServer(host="localhost", port=8081, auto_reconnect=True, reconnect_delay=1.0,
                        max_reconnect_delay=30.0, reconnect_backoff=2.0, concurrency=4)
    connected: bool = client.connect()
    if not connected:
        print("Connection failed; retrying in the background", file=sys.stderr)
    try:
        client.run_forever()
    finally:
        client.disconnect(timeout=10.0)


# -- AsyncPyStrandsClient: the asyncio face -------------------------------------------


class AsyncChat(AsyncPyStrandsClient):
    """The same chat with ``async def`` callbacks, awaiting its sends."""

    async def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        return admit(request)

    async def on_new_connection(self, context: Context) -> None:
        await self.send_private_message(context.client_id, "Welcome!")

    async def on_message(self, message: str, context: Context) -> None:
        await self.send_room_message(context.room_id, f"echo: {message}")

    async def on_disconnect(self, context: Context) -> None:
        await self.broadcast_message(f"{context.client_id} left")

    async def on_error(self, error: str, context: Context) -> None:
        print(f"Error for {context.client_id}: {error}", file=sys.stderr)


async def run_asyncio() -> None:
    """Serve on the running loop until cancelled."""
    client = AsyncChat(port=8081, idle_timeout=45.0)
    if not await client.connect():
        print("Connection failed; retrying in the background", file=sys.stderr)
    try:
        await client.run_forever()
    finally:
        await client.disconnect(timeout=5.0)


# -- PyStrands: the decorator face -------------------------------------------------------

app = PyStrands("localhost", 8081)


@app.on_connection_request
def check(request: ConnectionRequestContext) -> bool:
    return admit(request)


@app.on_new_connection
async def greet(context: Context) -> None:
    await app.send_private_message(context.client_id, "hello")


@app.on_message
def echo(message: str, context: Context) -> None:
    app.send_room_message(context.room_id, message)


@app.on_disconnect
def left(context: Context) -> None:
    app.broadcast(f"{context.client_id} left")


@app.on_error
def broker_error(error: str, context: Context) -> None:
    app.broadcast_message(f"broker error: {error}")


# -- A Twisted-native backend under BackendService -------------------------------------


@implementer(IBackend)
class TwistedChat:
    """Any object declared ``@implementer(IBackend)`` with the five callbacks is a backend."""

    broker: IBrokerConnection

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        return admit(request)

    def on_new_connection(self, context: Context) -> None:
        self.broker.send_private_message(context.client_id, "Welcome!")

    def on_message(self, message: str, context: Context) -> Deferred[None]:
        # The next event of this client waits for the returned Deferred.
        return self.broker.send_room_message(context.room_id, f"{display_name(context)}: {message}")

    def on_disconnect(self, context: Context) -> None:
        self.broker.broadcast_message(f"{context.client_id} left")

    def on_error(self, error: str, context: Context) -> None:
        print(f"broker error: {error}", file=sys.stderr)


class SubclassedChat(Backend):
    """The same through the ``Backend`` base class, which supplies the other defaults."""

    async def on_message(self, message: str, context: Context) -> None:
        await self.broker.send_room_message(context.room_id, message)


# -- Extension requests (presence, kick, rooms, metadata) on every face -------------


class PresenceChat(PyStrandsClient):
    """The blocking face's requests: Futures, chained from a handler on the I/O thread."""

    def on_message(self, message: str, context: Context) -> None:
        members: concurrent.futures.Future[list[Context]] = self.room_members(context.room_id)
        members.add_done_callback(lambda done: print([m.client_id for m in done.result()]))
        kicked: concurrent.futures.Future[bool] = self.disconnect_client(context.client_id, 4000, "bye")
        kicked.add_done_callback(lambda done: print(done.result()))
        self.join_room(context.client_id, "game-7")
        self.leave_room(context.client_id, context.room_id)
        self.set_metadata(context.client_id, {"name": "ann"})
        rooms: list[str] = context.rooms
        print(rooms)


class AsyncPresenceChat(AsyncPyStrandsClient):
    """The asyncio face's requests: awaitables."""

    async def on_message(self, message: str, context: Context) -> None:
        try:
            members: list[Context] = await self.room_members(context.room_id)
        except NotSupportedError:
            members = []
        joined: bool = await self.join_room(context.client_id, "game-7")
        left: bool = await self.leave_room(context.client_id, "game-7")
        updated: bool = await self.set_metadata(context.client_id, {"n": len(members)})
        try:
            kicked: bool = await self.disconnect_client(context.client_id, code=4001, reason="full")
        except BrokerRefused as refused:
            print(refused.reason)
            kicked = False
        print(joined, left, updated, kicked)


def twisted_presence(broker: IBrokerConnection, context: Context) -> Deferred[list[Context]]:
    """The Twisted-native requests: Deferreds."""
    return broker.room_members(context.room_id)


def backend_application(reactor: Any) -> tuple[MultiService, BackendService]:
    """BackendService in a Twisted application, as the README shows it."""
    application = MultiService()  # type: ignore[no-untyped-call]  # Twisted's service module is unannotated
    service = BackendService(TwistedChat(), "tcp:host=localhost:port=8081", reactor=reactor,
                             stop_timeout=5.0, concurrency=8)
    service.setServiceParent(application)  # type: ignore[no-untyped-call]  # as above
    BackendService(SubclassedChat(), reactor=reactor)
    return application, service


def send_from_the_web_app(service: BackendService) -> Deferred[None] | None:
    """Anywhere later, e.g. in a web request handler: send through the running service."""
    broker = service.broker
    if broker is None:
        return None  # not started yet
    return broker.send_room_message("lobby", "hello from the web app")


# -- The embedded broker ------------------------------------------------------------------


def embedded_broker(reactor: Any) -> BrokerService:
    """BrokerService with a BrokerConfig, reporting its ports once it listens."""
    config = BrokerConfig(ws_port=0, tcp_port=0, allowed_origins=("https://*.example.com",),
                          max_clients=100, backend_token="secret")
    service = BrokerService(config, reactor)

    def listening(ports: tuple[int, int]) -> None:
        print(f"WebSocket on {ports[0]}, backends on {ports[1]}")

    service.when_listening().addCallback(listening)
    BrokerService(reactor=reactor, queue_size=10)  # or the fields as keywords
    return service


# -- Entry point: never run by the tests ----------------------------------------------------


def main(argv: list[str]) -> int:
    """Run one face: ``blocking`` (default), ``asyncio`` or ``decorators``."""
    face = argv[1] if len(argv) > 1 else "blocking"
    if face == "blocking":
        run_blocking()
    elif face == "asyncio":
        asyncio.run(run_asyncio())
    elif face == "decorators":
        app.run()
    else:
        print(f"unknown face {face!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

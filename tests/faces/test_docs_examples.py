"""Every example of docs/client-reference.md and docs/context-reference.md, run as written.

The snippets below are copied from the documents; only the broker port is
adapted (``port=8081`` becomes the fake broker's). Method snippets, which the
documents show without their class, are run as methods of a PyStrandsClient
subclass; names they leave to the reader (``validate_token``, ``logger``...)
are supplied.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from typing import Any, Iterator

import pytest

from pystrands import AsyncPyStrandsClient, Context, PyStrandsClient
from tests.faces.conftest import accept_client, event, nested_context
from tests.faces.test_async import off, run
from tests.support.fakebroker import BackendConnection, FakeBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]


def adapt(code: str, port: int) -> str:
    return textwrap.dedent(code).replace("port=8081", f"port={port}").replace(
        "PyStrandsClient()", f"PyStrandsClient(port={port})")


def doc_backend(methods: str, **names: Any) -> type[PyStrandsClient]:
    """A PyStrandsClient subclass whose body is the documented method snippet."""
    namespace: dict[str, Any] = {"PyStrandsClient": PyStrandsClient, "time": time, **names}
    exec("class DocBackend(PyStrandsClient):\n" + textwrap.indent(textwrap.dedent(methods), "    "),
         namespace)
    return namespace["DocBackend"]


@pytest.fixture
def serve(broker: FakeBroker) -> Iterator[Any]:
    """serve(methods, **names) -> connection of a running DocBackend; disconnected afterwards."""
    clients: list[PyStrandsClient] = []

    def start(methods: str, **names: Any) -> BackendConnection:
        client = doc_backend(methods, **names)(port=broker.port)
        clients.append(client)
        assert client.connect()
        return broker.accept()

    yield start
    for client in clients:
        client.disconnect(timeout=1.0)


def message(conn: BackendConnection, text: str, client_id: str = "c1", room_id: str = "lobby",
            metadata: dict[str, Any] | None = None) -> None:
    conn.send_frame(event("new_message", nested_context(client_id, room_id, metadata or {}), message=text))


def wait_for_output(capsys: Any, expected: str, timeout: float = 5.0) -> str:
    """Everything printed so far, once ``expected`` is in it (handlers print from worker threads)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while expected not in seen:
        assert time.monotonic() < deadline, f"{expected!r} was not printed; got {seen!r}"
        time.sleep(0.02)
        seen += capsys.readouterr().out
    return seen


# -- client-reference.md -------------------------------------------------------------


OVERVIEW = """
    from pystrands import PyStrandsClient

    class MyBackend(PyStrandsClient):
        def on_message(self, message, context):
            self.send_room_message(context.room_id, f"echo: {message}")

    client = MyBackend(host="localhost", port=8081)
    client.run_forever()
"""


def test_overview(broker: FakeBroker) -> None:
    namespace: dict[str, Any] = {}
    runner = threading.Thread(target=exec, args=(adapt(OVERVIEW, broker.port), namespace), daemon=True)
    runner.start()
    conn = broker.accept()
    message(conn, "hi")
    assert conn.recv_frame()["params"] == {"room_id": "lobby", "message": "echo: hi"}
    namespace["client"].disconnect()
    runner.join(5)
    assert not runner.is_alive()


def test_constructor_example() -> None:
    namespace: dict[str, Any] = {"PyStrandsClient": PyStrandsClient}
    exec(textwrap.dedent("""
        client = PyStrandsClient(
            host="broker.example.com",
            port=8081,
            auto_reconnect=True,
            reconnect_delay=1.0,
            max_reconnect_delay=30.0,
            reconnect_backoff=2.0
        )
    """), namespace)
    client = namespace["client"]
    assert (client.host, client.port, client.auto_reconnect, client.connected) == (
        "broker.example.com", 8081, True, False)


CONNECT = """
    client = PyStrandsClient()
    if client.connect():
        print("Connected successfully")
    else:
        print("Connection failed")
"""


def test_connect_example_both_ways(broker: FakeBroker, free_port: int, capsys: Any) -> None:
    namespace: dict[str, Any] = {"PyStrandsClient": PyStrandsClient}
    exec(adapt(CONNECT, broker.port), namespace)
    assert capsys.readouterr().out == "Connected successfully\n"
    broker.accept()
    exec("client.disconnect(timeout=10.0)", namespace)  # the disconnect() example
    assert namespace["client"].connected is False
    exec(adapt(CONNECT, free_port), namespace)
    assert capsys.readouterr().out == "Connection failed\n"
    namespace["client"].disconnect(timeout=1.0)


COMPLETE = """
    import logging
    from pystrands import PyStrandsClient

    logging.basicConfig(level=logging.INFO)

    class ChatServer(PyStrandsClient):
        def on_connection_request(self, request):
            # Simple auth check
            token = request.headers.get("X-Token", [None])[0]
            if token != "secret":
                return False

            # Set room from URL
            request.context.room_id = request.url.strip("/") or "lobby"
            request.context.metadata = {"token": token}
            return True

        def on_new_connection(self, context):
            self.send_room_message(
                context.room_id,
                f"User {context.client_id} joined"
            )

        def on_message(self, message, context):
            formatted = f"{context.client_id}: {message}"
            self.send_room_message(context.room_id, formatted)

        def on_disconnect(self, context):
            self.send_room_message(
                context.room_id,
                f"User {context.client_id} left"
            )

    if __name__ == "__main__":
        client = ChatServer(
            host="localhost",
            port=8081,
            auto_reconnect=True
        )
        client.run_forever()
"""


def test_complete_example_as_a_program(broker: FakeBroker) -> None:
    process = subprocess.Popen([sys.executable, "-c", adapt(COMPLETE, broker.port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn = broker.accept(timeout=20)
        assert accept_client(conn, "r1", "/ws/lobby", headers={"X-Token": ["wrong"]})["accepted"] is False
        reply = accept_client(conn, "r2", "/ws/lobby", headers={"X-Token": ["secret"]})
        assert reply["room_id"] == "ws/lobby" and reply["metadata"] == {"token": "secret"}
        context = nested_context("c1", "ws/lobby", {"token": "secret"})
        conn.send_frame(event("new_connection", context))
        conn.send_frame(event("new_message", context, message="hi"))
        conn.send_frame(event("disconnected", context))
        assert [f["params"]["message"] for f in conn.recv_frames(3, timeout=10)] == [
            "User c1 joined", "c1: hi", "User c1 left"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output


def test_broadcast_example(serve: Any) -> None:
    conn = serve("""
        def on_message(self, message, context):
            if message == "!announce":
                self.broadcast_message("Important system update!")
    """)
    message(conn, "hello")
    message(conn, "!announce")
    frame = conn.recv_frame()
    assert (frame["action"], frame["params"]) == ("broadcast", {"message": "Important system update!"})
    conn.assert_silent(0.2)


def test_send_room_and_private_message_examples(serve: Any) -> None:
    conn = serve("""
        def on_message(self, message, context):
            # Echo to the same room
            self.send_room_message(context.room_id, f"echo: {message}")

        def on_new_connection(self, context):
            # Welcome message to the new client only
            self.send_private_message(
                context.client_id,
                f"Welcome to {context.room_id}!"
            )
    """)
    conn.send_frame(event("new_connection", nested_context("c1", "lobby", {})))
    assert conn.recv_frame()["params"] == {"conn_id": "c1", "message": "Welcome to lobby!"}
    message(conn, "hi")
    assert conn.recv_frame()["params"] == {"room_id": "lobby", "message": "echo: hi"}


def test_on_connection_request_example(serve: Any) -> None:
    conn = serve("""
        def on_connection_request(self, request):
            # Check authorization header
            auth = request.headers.get("Authorization", [None])[0]
            if auth != "Bearer valid-token":
                return False

            # Set room based on URL path
            request.context.room_id = request.url.strip("/")

            # Store user metadata
            request.context.metadata = {"user": "alice", "role": "admin"}

            return True
    """)
    assert accept_client(conn, "r1", headers={})["accepted"] is False
    reply = accept_client(conn, "r2", "/room1", headers={"Authorization": ["Bearer valid-token"]})
    assert reply["accepted"] is True and reply["room_id"] == "room1"
    assert reply["metadata"] == {"user": "alice", "role": "admin"}


def test_callback_examples(serve: Any, capsys: Any) -> None:
    conn = serve("""
        def on_new_connection(self, context):
            print(f"New client: {context.client_id} in room: {context.room_id}")
            self.send_private_message(context.client_id, "Welcome!")

        def on_message(self, message, context):
            print(f"[{context.room_id}] {context.client_id}: {message}")

            # Echo back to room
            self.send_room_message(context.room_id, f"echo: {message}")

        def on_disconnect(self, context):
            print(f"Client disconnected: {context.client_id}")
            # Notify others in the room
            self.send_room_message(
                context.room_id,
                f"User {context.client_id} left"
            )

        def on_error(self, error, context):
            print(f"Error for {context.client_id}: {error}")
    """)
    conn.send_frame(event("new_connection", nested_context("c1", "lobby", {})))
    message(conn, "hi")
    conn.send_frame(event("disconnected", nested_context("c1", "lobby", {})))
    conn.send_frame(event("error", {"headers": {}, "url": "/ws/x", "remote_addr": "127.0.0.1:1"},
                          error="no backend available to handle connection request"))
    assert [f["params"]["message"] for f in conn.recv_frames(3)] == ["Welcome!", "echo: hi", "User c1 left"]
    output = wait_for_output(capsys, "Error for None: no backend available")
    lines = output.splitlines()  # the error is no client's, so it may come before c1's events
    lines.remove("Error for None: no backend available to handle connection request")
    assert lines == ["New client: c1 in room: lobby", "[lobby] c1: hi", "Client disconnected: c1"]


# -- context-reference.md ------------------------------------------------------------


def test_client_id_and_room_id_examples(serve: Any, capsys: Any) -> None:
    conn = serve("""
        def on_connection_request(self, request):
            # Assign room based on URL
            request.context.room_id = request.url.strip("/") or "lobby"
            return True

        def on_message(self, message, context):
            print(f"Message from {context.client_id}")
            # Send a private reply
            self.send_private_message(context.client_id, "Received!")
            # Send to everyone in the same room
            self.send_room_message(context.room_id, message)
    """)
    assert accept_client(conn, "r1", "/")["room_id"] == "lobby"
    message(conn, "yo")
    assert [f["params"] for f in conn.recv_frames(2)] == [
        {"conn_id": "c1", "message": "Received!"}, {"room_id": "lobby", "message": "yo"}]
    assert wait_for_output(capsys, "Message from c1") == "Message from c1\n"


def test_metadata_example(serve: Any, capsys: Any) -> None:
    user = types.SimpleNamespace(id=42, name="alice", role="admin")
    conn = serve("""
        def on_connection_request(self, request):
            # Authenticate and store user info
            token = request.headers.get("Authorization", [""])[0]
            user = validate_token(token)
            request.context.metadata = {
                "user_id": user.id,
                "username": user.name,
                "role": user.role,
                "joined_at": time.time()
            }
            return True

        def on_message(self, message, context):
            # Access metadata in handlers
            username = context.metadata.get("username", "anonymous")
            print(f"{username}: {message}")
    """, validate_token=lambda token: user)
    reply = accept_client(conn, headers={"Authorization": ["t"]})
    stored = reply["metadata"]
    assert stored["username"] == "alice" and isinstance(stored["joined_at"], float)
    message(conn, "hello", metadata=stored)  # the reference broker's nested form
    assert wait_for_output(capsys, "alice: hello") == "alice: hello\n"


def test_from_json_and_to_json_examples(serve: Any, caplog: Any) -> None:
    namespace: dict[str, Any] = {"Context": Context}
    exec(textwrap.dedent("""
        data = {
            "client_id": "550e8400-e29b-41d4-a716-446655440000",
            "room_id": "room1",
            "metadata": {"user": "alice"}
        }
        context = Context.from_json(data)
    """), namespace)
    assert namespace["context"].metadata == {"user": "alice"}
    assert namespace["context"].to_json() == namespace["data"]
    logger = logging.getLogger("docs.example")
    conn = serve("""
        def on_new_connection(self, context):
            # Log context as JSON
            logger.info(f"New connection: {context.to_json()}")
            self.send_private_message(context.client_id, "logged")
    """, logger=logger)
    with caplog.at_level(logging.INFO, logger="docs.example"):
        conn.send_frame(event("new_connection", nested_context("c1", "lobby", {"a": 1})))
        conn.recv_frame()
    assert "New connection: {'client_id': 'c1', 'room_id': 'lobby', 'metadata': {'a': 1}}" in caplog.text


def test_headers_url_and_remote_addr_examples(serve: Any) -> None:
    blocked = {"10.0.0.9:1"}
    conn = serve("""
        def on_connection_request(self, request):
            # Get Authorization header
            auth_list = request.headers.get("Authorization", [])
            auth_header = auth_list[0] if auth_list else None

            # Get custom header
            custom_list = request.headers.get("X-API-Key", [])
            api_key = custom_list[0] if custom_list else None

            # Validate
            if not validate_auth(auth_header):
                return False

            # request.url == "/room1"
            room = request.url.strip("/")
            request.context.room_id = room or "default"

            client_ip = request.remote_addr

            # Check blocklist
            if client_ip in BLOCKED_IPS:
                logger.warning(f"Blocked connection from {client_ip}")
                return False

            # Rate limiting
            if not check_rate_limit(client_ip):
                return False

            return True
    """, validate_auth=lambda header: header == "yes", BLOCKED_IPS=blocked,
        logger=logging.getLogger("docs.example"), check_rate_limit=lambda ip: True)
    assert accept_client(conn, "r1", "/room1", headers={"Authorization": ["no"]})["accepted"] is False
    reply = accept_client(conn, "r2", "/room1", headers={"Authorization": ["yes"]})
    assert reply["accepted"] is True and reply["room_id"] == "room1"
    assert accept_client(conn, "r3", "/", headers={"Authorization": ["yes"]})["room_id"] == "default"
    assert accept_client(conn, "r4", "/room1", headers={"Authorization": ["yes"]},
                         remote_addr="10.0.0.9:1")["accepted"] is False


def test_context_attribute_example(serve: Any, capsys: Any) -> None:
    conn = serve("""
        def on_connection_request(self, request):
            # Access the context
            ctx = request.context

            # Set room
            ctx.room_id = request.url.strip("/")

            # Add metadata
            ctx.metadata = {
                "connected_at": time.time(),
                "ip": request.remote_addr
            }

            # Access client_id (auto-generated)
            print(f"New client: {ctx.client_id}")
            return True
    """)
    reply = accept_client(conn, url="/room1")
    assert reply["room_id"] == "room1" and reply["metadata"]["ip"] == "127.0.0.1:46092"
    assert wait_for_output(capsys, "New client:") == f"New client: {reply['client_id']}\n"


@pytest.mark.parametrize("option", [
    """
    # Option 1: Return boolean
    def on_connection_request(self, request):
        if not is_valid(request):
            return False
        return True
    """,
    """
    # Option 2: Modify accepted directly
    def on_connection_request(self, request):
        if not is_valid(request):
            request.accepted = False
            # Can still do more processing...
        return request.accepted
    """,
])
def test_accepted_examples(serve: Any, option: str) -> None:
    conn = serve(option, is_valid=lambda request: request.url != "/ws/bad")
    assert accept_client(conn, "r1", "/ws/bad")["accepted"] is False
    assert accept_client(conn, "r2", "/ws/good")["accepted"] is True


def test_complete_authentication_example(serve: Any, caplog: Any) -> None:
    users = {"Bearer a": types.SimpleNamespace(id=1, name="ann", role="admin"),
             "Bearer b": types.SimpleNamespace(id=2, name="bob", role="user")}
    conn = serve("""
        def validate_token(self, token):
            return users.get(token)

        def on_connection_request(self, request):
            # Extract info from request
            token = request.headers.get("Authorization", [""])[0]
            room = request.url.strip("/") or "lobby"
            ip = request.remote_addr

            # Validate token
            user = self.validate_token(token)
            if not user:
                logger.warning(f"Invalid token from {ip}")
                return False

            # Set up context
            request.context.room_id = room
            request.context.metadata = {
                "user_id": user.id,
                "username": user.name,
                "role": user.role,
                "ip": ip,
                "connected_at": time.time()
            }

            logger.info(f"User {user.name} joined room {room}")
            return True

        def on_message(self, message, context):
            # Access metadata
            username = context.metadata["username"]
            role = context.metadata["role"]

            # Check permissions
            if role != "admin" and message.startswith("/"):
                self.send_private_message(context.client_id, "Admin only!")
                return

            # Process message
            self.send_room_message(context.room_id, f"{username}: {message}")

        def on_disconnect(self, context):
            # Clean up
            username = context.metadata.get("username", "unknown")
            room = context.room_id
            logger.info(f"User {username} left room {room}")
    """, users=users, logger=logging.getLogger("docs.example"))
    with caplog.at_level(logging.INFO, logger="docs.example"):
        assert accept_client(conn, "r0", headers={"Authorization": ["Bearer x"]})["accepted"] is False
        bob = accept_client(conn, "r1", "/chat", headers={"Authorization": ["Bearer b"]})
        assert bob["room_id"] == "chat"
        message(conn, "/kick ann", "c-bob", "chat", bob["metadata"])
        message(conn, "hi", "c-bob", "chat", bob["metadata"])
        assert [f["params"] for f in conn.recv_frames(2)] == [
            {"conn_id": "c-bob", "message": "Admin only!"}, {"room_id": "chat", "message": "bob: hi"}]
        conn.send_frame(event("disconnected", nested_context("c-bob", "chat", bob["metadata"])))
        conn.send_frame(event("new_message", nested_context("c-bob", "chat", bob["metadata"]), message="x"))
        conn.recv_frame()
    assert "Invalid token from 127.0.0.1:46092" in caplog.text
    assert "User bob joined room chat" in caplog.text and "User bob left room chat" in caplog.text


def test_debugging_example(serve: Any, capsys: Any) -> None:
    conn = serve("""
        def on_connection_request(self, request):
            # Log all request info for debugging
            print(f"Connection request:")
            print(f" URL: {request.url}")
            print(f" IP: {request.remote_addr}")
            print(f" Headers: {request.headers}")
            print(f" Client ID: {request.context.client_id}")
            return True

        def on_message(self, message, context):
            # Log full context
            print(f"Message context: {context.to_json()}")
            # Output: {"client_id": "...", "room_id": "...", "metadata": {...}}
    """)
    reply = accept_client(conn, headers={"X-Token": ["ok"]})
    message(conn, "m", metadata={"k": "v"})
    output = wait_for_output(capsys, "Message context:")
    assert output.splitlines() == [
        "Connection request:", " URL: /ws/lobby/alice", " IP: 127.0.0.1:46092",
        " Headers: {'X-Token': ['ok']}", f" Client ID: {reply['client_id']}",
        "Message context: {'client_id': 'c1', 'room_id': 'lobby', 'metadata': {'k': 'v'}}"]


TYPE_HINTS = """
    from pystrands import AsyncPyStrandsClient
    from pystrands.context import Context, ConnectionRequestContext

    class TypedBackend(AsyncPyStrandsClient):
        async def on_connection_request(self, request: ConnectionRequestContext) -> bool:
            # IDE knows request has headers, url, remote_addr, context, accepted
            return True

        async def on_message(self, message: str, context: Context) -> None:
            # IDE knows context has client_id, room_id, metadata
            pass
"""


def test_type_hints_example(broker: FakeBroker) -> None:
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(TYPE_HINTS), namespace)

    async def body() -> None:
        client = namespace["TypedBackend"](port=broker.port)
        assert isinstance(client, AsyncPyStrandsClient) and await client.connect()
        conn = await off(broker.accept)
        assert (await off(accept_client, conn))["accepted"] is True
        message(conn, "typed")
        await off(conn.assert_silent, 0.2)
        await client.disconnect()

    run(body)
    assert asyncio.iscoroutinefunction(namespace["TypedBackend"].on_message)

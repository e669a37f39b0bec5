"""Each example started as written, as a child process, against the embedded broker and real WebSocket
clients."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.demo.support import Broker, Child, Launch, OpenWs, free_port, open_when_served


def recv(ws: ClientConnection) -> str:
    """The next text message, within 5 seconds."""
    return ws.recv(timeout=5)


def assert_quiet(ws: ClientConnection) -> None:
    """Nothing arrives within a short while."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.3)


def stops_cleanly(child: Child) -> None:
    """Ctrl-C ends it with status 0 and no traceback."""
    assert child.interrupt() == 0
    assert "Traceback" not in child.output()


def http(url: str, body: str | None = None) -> tuple[int, Any]:
    """GET, or POST ``body``; the status and the (JSON-decoded, if JSON) body."""
    data = None if body is None else body.encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as response:
            status, payload, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(payload) if kind == "application/json" else payload.decode()


@pytest.mark.parametrize("command", [["examples/echo.py"], ["-m", "examples.echo"]])
def test_echo(broker: Broker, launch: Launch, open_ws: OpenWs, command: list[str]) -> None:
    child = launch([*command, "--port", str(broker.tcp_port)], name="echo")
    first = open_when_served(open_ws, f"{broker.ws_url}/lobby")
    second = open_ws(f"{broker.ws_url}/lobby")
    elsewhere = open_ws(f"{broker.ws_url}/attic")
    first.send("hello")
    assert recv(first) == recv(second) == "echo: hello"
    assert_quiet(elsewhere)
    stops_cleanly(child)


def test_auth(broker: Broker, launch: Launch, open_ws: OpenWs) -> None:
    child = launch(["examples/auth.py", "--port", str(broker.tcp_port)], name="auth")
    alice = open_when_served(open_ws, f"{broker.ws_url}/ops?token=alice-token")
    assert recv(alice) == "welcome alice (admin) to ops"
    assert recv(alice) == "alice joined"
    for url in [f"{broker.ws_url}/ops", f"{broker.ws_url}/ops?token=nope"]:
        with pytest.raises(InvalidStatus) as refused:
            open_ws(url)
        assert refused.value.response.status_code == 403

    with connect(f"{broker.ws_url}/ops", additional_headers={"Authorization": "Bearer bob-token"},
                 open_timeout=5) as bob:
        assert recv(bob) == "welcome bob (member) to ops"
        assert recv(alice) == "bob joined"
        bob.send("hi")
        assert recv(alice) == "bob: hi"
        assert recv(bob) == "bob joined"
        assert recv(bob) == "bob: hi"
        bob.send("/broadcast nope")
        assert recv(bob) == "only an admin may /broadcast"
        assert_quiet(alice)
    assert recv(alice) == "bob left"

    lobby = open_ws(f"{broker.ws_url}/lobby?token=bob-token")
    assert recv(lobby) == "welcome bob (member) to lobby"
    alice.send("/broadcast fire drill")
    assert recv(alice) == "[alice to everyone] fire drill"
    assert recv(lobby) == "bob joined"
    assert recv(lobby) == "[alice to everyone] fire drill"
    stops_cleanly(child)


def test_decorators(broker: Broker, launch: Launch, open_ws: OpenWs) -> None:
    child = launch(["-m", "examples.decorators", "--port", str(broker.tcp_port)], name="decorators")
    first = open_when_served(open_ws, f"{broker.ws_url}/den")
    assert recv(first) == "welcome to den, 1 here now"
    second = open_ws(f"{broker.ws_url}/den")
    assert recv(second) == "welcome to den, 2 here now"
    second.send("/who")
    assert recv(second) == "2 in den"
    first.send("anyone?")
    assert recv(second).endswith(": anyone?")
    assert recv(first).endswith(": anyone?")
    stops_cleanly(child)


def test_flask_app(broker: Broker, launch: Launch, open_ws: OpenWs) -> None:
    http_port = free_port()
    web = f"http://127.0.0.1:{http_port}"
    child = launch(["examples/flask_app.py", "--port", str(broker.tcp_port), "--http-port", str(http_port)],
                   name="flask")
    client = open_when_served(open_ws, f"{broker.ws_url}/news")
    child.wait_for_port(http_port)
    assert http(f"{web}/status") == (200, {"connected": True})
    assert http(f"{web}/rooms/news", "extra, extra") == (202, "sent\n")
    assert recv(client) == "extra, extra"
    assert http(f"{web}/broadcast", "to all") == (202, "sent\n")
    assert recv(client) == "to all"

    client.send("a reader writes")
    deadline = time.monotonic() + 5
    while not (history := http(f"{web}/rooms/news/messages")[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [entry["message"] for entry in history] == ["a reader writes"]
    stops_cleanly(child)


def test_twisted_app(broker: Broker, launch: Launch, open_ws: OpenWs) -> None:
    port = free_port()
    child = launch(["-m", "examples.twisted_app", "--http", f"tcp:{port}:interface=127.0.0.1",
                    "--broker", f"tcp:host=127.0.0.1:port={broker.tcp_port}"], name="twisted_app")
    client = open_when_served(open_ws, f"{broker.ws_url}/lobby")
    child.wait_for_port(port)
    assert http(f"http://127.0.0.1:{port}/rooms/lobby", "from the web") == (200, "sent\n")
    assert recv(client) == "from the web"
    client.send("hi")
    assert recv(client).endswith(": hi")
    stops_cleanly(child)


def test_fastapi_app(broker: Broker, launch: Launch, open_ws: OpenWs) -> None:
    port = free_port()
    child = launch(["-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)],
                   name="fastapi_app", env={"PYSTRANDS_BROKER_HOST": "127.0.0.1",
                                            "PYSTRANDS_BROKER_PORT": str(broker.tcp_port)})
    client = open_when_served(open_ws, f"{broker.ws_url}/lobby")
    child.wait_for_port(port)
    answer = http(f"http://127.0.0.1:{port}/rooms/lobby", "from fastapi")
    assert answer == (200, {"room": "lobby", "sent": "from fastapi"})
    assert recv(client) == "from fastapi"
    client.send("hi")
    assert recv(client) == "echo: hi"
    stops_cleanly(child)

"""The chat demo end to end: ``python -m examples.chat`` with real WebSocket clients."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.demo.support import (CHAT_STATIC, Child, Launch, OpenWs, open_when_served, receive_json, receive_until,
                                start_broker)


def join(open_ws: OpenWs, ws_url: str, room: str, name: str) -> ClientConnection:
    """A client in ``room`` as ``name``, past its welcome, join and member-list messages."""
    ws = open_when_served(open_ws, f"{ws_url}/{room}?name={name}")
    welcome = receive_json(ws)
    assert welcome["type"] == "welcome" and welcome["room"] == room
    receive_until(ws, lambda m: m["type"] == "join" and m["id"] == welcome["id"])
    receive_until(ws, lambda m: m["type"] == "members" and welcome["id"] in ids(m))
    ws.client_id = welcome["id"]  # type: ignore[attr-defined]
    return ws


def ids(members_message: dict[str, Any]) -> list[str]:
    """The client ids of a ``members`` message."""
    return [member["id"] for member in members_message["members"]]


def names(members_message: dict[str, Any]) -> list[str]:
    """The names of a ``members`` message, in its order."""
    return [member["name"] for member in members_message["members"]]


def test_serves_the_page(demo: tuple[Child, str, int]) -> None:
    _, _, port = demo
    for path, expected in [("", b"chat.js"), ("chat.js", b'from "/pystrands.js"'), ("chat.css", b".members"),
                           ("pystrands.js", b"export class PyStrandsClient")]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as response:
            assert response.status == 200
            assert expected in response.read()


def test_the_page_and_its_websockets_are_served_to_this_machine_only(demo: tuple[Child, str, int]) -> None:
    """The demo's chat has no login: it listens on 127.0.0.1 unless told otherwise (--ws-interface)."""
    _, _, port = demo
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
    assert listening == [f"0100007F:{port:04X}"]


def test_chat_between_two_clients(demo: tuple[Child, str, int], open_ws: OpenWs) -> None:
    child, ws_url, _ = demo
    alice = join(open_ws, ws_url, "lobby", "alice")
    bob = join(open_ws, ws_url, "lobby", "bob")
    assert receive_until(alice, lambda m: m["type"] == "join")["name"] == "bob"
    assert names(receive_until(alice, lambda m: m["type"] == "members")) == ["alice", "bob"]

    markup = "<b>hi</b> & <script>x()</script>"
    bob.send(f'{{"text": "{markup}"}}')
    said = receive_until(alice, lambda m: m["type"] == "message")
    assert (said["name"], said["id"], said["text"]) == ("bob", bob.client_id, markup)
    assert receive_until(bob, lambda m: m["type"] == "message")["text"] == markup

    elsewhere = join(open_ws, ws_url, "kitchen", "carol")
    elsewhere.send('{"text": "only in the kitchen"}')
    assert receive_until(elsewhere, lambda m: m["type"] == "message")["text"] == "only in the kitchen"

    bob.close()
    assert receive_until(alice, lambda m: m["type"] == "leave")["name"] == "bob"
    assert names(receive_until(alice, lambda m: m["type"] == "members")) == ["alice"]
    alice.send('{"text": "still here"}')
    assert receive_until(alice, lambda m: m["type"] == "message")["text"] == "still here"

    assert child.interrupt() == 0
    with pytest.raises(ConnectionClosed):
        alice.recv(timeout=5)
    assert alice.close_code == 1001
    assert "Traceback" not in child.output()
    assert "Chat demo stopped." in child.output()


@pytest.mark.parametrize("bad, why", [
    ('{"text": "   "}', "Empty"),
    ('{"text": "' + "x" * 501 + '"}', "limited to 500"),
    ("not json", "JSON object"),
    ('{"text": 5}', "JSON object"),
])
def test_refused_messages_get_a_private_notice(demo: tuple[Child, str, int], open_ws: OpenWs, bad: str,
                                                why: str) -> None:
    _, ws_url, _ = demo
    alice = join(open_ws, ws_url, "lobby", "alice")
    bob = join(open_ws, ws_url, "lobby", "bob")
    bob.send(bad)
    assert why in receive_until(bob, lambda m: m["type"] == "notice")["text"]
    bob.send('{"text": "fine"}')
    following = receive_until(alice, lambda m: m["type"] in ("message", "notice"))
    assert (following["type"], following["text"]) == ("message", "fine")


@pytest.mark.parametrize("path", [
    "lobby?name=",
    "lobby?name=%20%20",
    "lobby",
    "lobby?name=" + "n" * 25,
    "lobby?name=a%0Ab",
    "bad%20room?name=alice",
])
def test_bad_handshakes_are_rejected(demo: tuple[Child, str, int], path: str) -> None:
    _, ws_url, _ = demo
    with pytest.raises(InvalidStatus) as raised:
        with connect(f"{ws_url}/{path}", open_timeout=5):
            pass
    assert raised.value.response.status_code == 403


def test_a_broker_restart_leaves_no_ghosts(launch: Launch, open_ws: OpenWs) -> None:
    broker = start_broker(launch, "--static", str(CHAT_STATIC))
    backend = launch(["-m", "examples.chat", "--no-broker", "--tcp-port", str(broker.tcp_port)], name="backend")
    backend.wait_for_output("Chat backend running")
    ghost = join(open_ws, broker.ws_url, "lobby", "ghost")

    # A crash: unlike a graceful stop, no "disconnected" event reaches the backend.
    assert broker.child.stop(signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises(ConnectionClosed):
        ghost.recv(timeout=5)
    again = start_broker(launch, "--static", str(CHAT_STATIC), ws_port=broker.ws_port, tcp_port=broker.tcp_port)
    alice = open_when_served(open_ws, f"{again.ws_url}/lobby?name=alice")
    assert names(receive_until(alice, lambda m: m["type"] == "members")) == ["alice"]
    assert backend.interrupt() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_other_stop_signals_stop_the_broker_too(demo: tuple[Child, str, int], signum: int) -> None:
    child, _, port = demo
    assert child.stop(signum) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

"""Hostile input to both sides of the embedded broker, fuzzed with hypothesis, over real sockets.

Each side has a broker process of its own, a well-behaved backend
(``AutoBackend``) and an observer WebSocket client in room ``watch``. After
every example the good backend sends the observer a ping and the observer
sends one back: the offending connection may be refused or dropped, but no
other connection may notice, the broker may not die, and its memory stays
bounded. (The backend's side of the protocol is fuzzed in
``test_hostile_backend_input.py``.)
"""

from __future__ import annotations

import itertools
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest
from hypothesis import assume, given, settings, strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from tests.reliability.support import (
    AutoBackend, Broker, Launch, count, open_client, open_when_served, raw_backend, receive_text, rss_kib, start_broker,
    upgrade_request, wait_until,
)
from tests.reliability.test_hostile_backend_input import json_values
from tests.support.fakebroker import BackendConnection

FUZZ = settings(max_examples=100, deadline=None)
MAX_MESSAGE = 4096
pings = itertools.count()


def finite_json(value: Any) -> bool:
    """True if ``value`` encodes as standard JSON (no infinities)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


class Side:
    """A broker with a good backend and an observer client, and a check that both are unaffected."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.good = AutoBackend(broker.tcp_port)
        self.observer = self.client("watch")

    def client(self, room: str) -> ClientConnection:
        """A WebSocket client in ``room`` (the good backend accepts it); a failure quotes the broker's log."""
        try:
            return open_when_served(open_client, f"{self.broker.ws_url}/{room}")
        except (OSError, InvalidStatus) as error:
            raise self.broker.child.fail(f"no client could open in room {room!r} ({error!r})") from error

    def assert_unaffected(self) -> None:
        """A ping from the good backend reaches the observer, and one from the observer reaches the backend."""
        token = f"ping-{next(pings)}"
        self.good.send({"request_id": token, "action": "message_to_room",
                        "params": {"room_id": "watch", "message": token}})
        receive_text(self.observer, lambda message: message == token)
        self.observer.send(token)
        self.good.wait_for(lambda event: event["action"] == "new_message" and event["params"]["message"] == token)
        assert self.broker.child.process.poll() is None, "the broker died"

    def close(self) -> None:
        """Close the peers; fail if the broker logged an unhandled error."""
        self.observer.close()
        self.good.close()
        output = self.broker.child.output()
        assert "Unhandled Error" not in output and "Traceback" not in output, output[-3000:]


@pytest.fixture(scope="module")
def backend_side(module_launch: Launch) -> Iterator[tuple[Side, list[BackendConnection]]]:
    """The backend port's side: (side, [the offending backend connection, replaced if dropped])."""
    side = Side(start_broker(module_launch, name="broker-backend-side"))
    evil = [raw_backend(side.broker.tcp_port)]
    yield side, evil
    side.close()


def offend(evil: list[BackendConnection], port: int, data: bytes) -> BackendConnection:
    """Send ``data`` and a newline from the offending backend (reconnected first if the broker dropped it)."""
    if evil[0].closed.is_set():
        evil[0] = raw_backend(port)
    evil[0].send_raw(data + b"\n")
    return evil[0]


BACKEND_ACTIONS = st.sampled_from(["response", "message_to_room", "message_to_connection", "broadcast", "auth",
                                   # the protocol extensions (docs/PROTOCOL-EXTENSIONS.md): each gets a reply
                                   "room_members", "disconnect_client", "join_room", "leave_room", "set_metadata"])
BACKEND_FIELDS = st.sampled_from(["accepted", "client_id", "room_id", "metadata", "message", "conn_id", "token",
                                  "code", "reason"])


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_to_the_backend_port(backend_side: Any, data: bytes) -> None:
    side, evil = backend_side
    offend(evil, side.broker.tcp_port, data)
    side.assert_unaffected()


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["request_id", "action", "params"]), json_values)),
       BACKEND_ACTIONS | st.text(max_size=10),
       st.dictionaries(BACKEND_FIELDS, json_values | st.just("watch"), max_size=7) | json_values)
def test_wrong_json_types_in_every_field_of_every_backend_action(
        backend_side: Any, envelope: Any, action: str, params: Any) -> None:
    side, evil = backend_side
    frame = {"request_id": "fuzz", "action": action, "params": params}
    offend(evil, side.broker.tcp_port, json.dumps(envelope).encode())
    offend(evil, side.broker.tcp_port, json.dumps(frame).encode())
    side.assert_unaffected()


@FUZZ
@given(st.fixed_dictionaries({}, optional={"accepted": st.just(True) | json_values,
                                           "client_id": st.text(max_size=8) | json_values,
                                           "room_id": st.text(max_size=8) | json_values,
                                           "metadata": json_values}))
def test_fuzzed_responses_to_a_real_handshake(backend_side: Any, params: dict[str, Any]) -> None:
    """The offending backend judges a handshake with a broken answer: the client gets an answer, nothing else."""
    side, evil = backend_side
    assume(finite_json(params))  # else the line is not JSON at all, and the handshake waits for --auth-timeout
    conn = offend(evil, side.broker.tcp_port, b"")
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(open_client, f"{side.broker.ws_url}/judged")
        while (request := conn.recv_frame(timeout=5))["action"] != "connection_request":
            pass
        conn.send_frame({"request_id": request["request_id"], "action": "response", "params": params})
        try:
            opening.result(10).close()
        except InvalidStatus as refused:
            assert refused.response.status_code in (403, 409), refused
    side.assert_unaffected()


@pytest.mark.parametrize("valid_json", [True, False])
def test_a_line_over_the_frame_limit_is_skipped(backend_side: Any, valid_json: bool) -> None:
    """A 17 MiB line (the limit is 16 MiB) is skipped without being held; memory grows by less than 20 MiB."""
    side, evil = backend_side
    before = rss_kib(side.broker.child.process.pid)
    size = 17 * 1024 * 1024
    frame = {"request_id": "big", "action": "broadcast", "params": {"message": "x" * size}}
    skipped = count(side.broker.child, "longer than")
    offend(evil, side.broker.tcp_port, json.dumps(frame).encode() if valid_json else b"z" * size)
    wait_until(lambda: count(side.broker.child, "longer than") > skipped, "the skip to be logged",
               child=side.broker.child)
    side.assert_unaffected()
    growth = rss_kib(side.broker.child.process.pid) - before
    assert growth < 20 * 1024, f"the broker grew by {growth} KiB"


def test_memory_stays_bounded_under_a_stream_of_garbage_from_a_backend(backend_side: Any) -> None:
    side, evil = backend_side
    side.assert_unaffected()
    before = rss_kib(side.broker.child.process.pid)
    junk = b'{"action": 5}\n' * 2000 + b'{"request_id":"j","action":"broadcast","params":{"message":7}}\n' * 2000
    for _ in range(40):
        offend(evil, side.broker.tcp_port, junk)
    side.assert_unaffected()
    growth = rss_kib(side.broker.child.process.pid) - before
    assert growth < 20 * 1024, f"the broker grew by {growth} KiB after 5 MB of garbage"


# -- the WebSocket side ------------------------------------------------------------


class WsSide(Side):
    """The WebSocket port's side, with an offending client in room ``fuzz`` (reopened when closed)."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self.fuzz: ClientConnection | None = None

    def offender(self) -> ClientConnection:
        """The offending client, its new_connection event consumed."""
        if self.fuzz is None:
            self.fuzz = self.client("fuzz")
            assert self.good.wait_for(from_fuzz)["action"] == "new_connection"
        return self.fuzz


@pytest.fixture(scope="module")
def ws_side(module_launch: Launch) -> Iterator[WsSide]:
    side = WsSide(start_broker(module_launch, "--max-message-size", str(MAX_MESSAGE), name="broker-ws-side"))
    yield side
    side.close()


def from_fuzz(event: dict[str, Any]) -> bool:
    """An event about the offending client."""
    return event["params"].get("context", {}).get("room_id") == "fuzz"


@FUZZ
@given(st.text(max_size=MAX_MESSAGE + 500) | st.binary(max_size=MAX_MESSAGE + 500))
def test_random_websocket_messages(ws_side: WsSide, message: str | bytes) -> None:
    """Text arrives as it was sent, binary as text (UTF-8, replaced); over the limit: close 1009, nothing sent on."""
    ws_side.offender().send(message)
    size = len(message.encode() if isinstance(message, str) else message)
    if size > MAX_MESSAGE:
        with pytest.raises(ConnectionClosed) as closed:
            ws_side.fuzz.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        event = ws_side.good.wait_for(from_fuzz)
        assert event["action"] == "disconnected", "an oversized message must not reach the backend"
        ws_side.fuzz = None
    else:
        expected = message if isinstance(message, str) else message.decode("utf-8", "replace")
        event = ws_side.good.wait_for(from_fuzz)
        assert (event["action"], event["params"]["message"]) == ("new_message", expected)
    ws_side.assert_unaffected()


http_requests = st.builds(
    lambda method, path, version, headers, body: b"%s %s %s\r\n%s\r\n\r\n%s" % (
        method, path, version, b"\r\n".join(headers), body),
    st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS"]) | st.binary(max_size=8),
    st.sampled_from([b"/ws/fuzz", b"/", b"/ws/", b"/ws/../x", b"*", b"/ws/a?b=%zz"]) | st.binary(max_size=30),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"]) | st.binary(max_size=10),
    st.lists(st.sampled_from([b"Host: x", b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: close",
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13",
                              b"Sec-WebSocket-Version: 8", b"Content-Length: 5", b"Content-Length: -1",
                              b"Transfer-Encoding: chunked"]) | st.binary(max_size=60), max_size=8),
    st.binary(max_size=100),
)


@FUZZ
@given(http_requests | st.binary(max_size=500) | st.sampled_from([upgrade_request("/ws/fuzz")[:cut]
                                                                   for cut in range(0, 150, 10)]))
def test_bogus_handshakes_and_http_requests(ws_side: WsSide, request: bytes) -> None:
    """Whatever arrives on the WebSocket port, the broker answers or closes, and nobody else notices."""
    with socket.create_connection(("127.0.0.1", ws_side.broker.ws_port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    ws_side.assert_unaffected()


def test_memory_stays_bounded_under_a_stream_of_bogus_connections(ws_side: WsSide) -> None:
    ws_side.assert_unaffected()
    before = rss_kib(ws_side.broker.child.process.pid)
    for index in range(300):
        with socket.create_connection(("127.0.0.1", ws_side.broker.ws_port), timeout=5) as sock:
            sock.sendall(bytes(range(256)) * 64 if index % 2 else upgrade_request("/ws/fuzz")[:-2] + b"X: " * 5000)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    ws_side.assert_unaffected()
    growth = rss_kib(ws_side.broker.child.process.pid) - before
    assert growth < 20 * 1024, f"the broker grew by {growth} KiB after 300 bogus connections"

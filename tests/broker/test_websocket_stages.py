"""A WebSocket-port socket's stages, driven by hand: HEAD -> HTTP | JUDGING -> OPEN -> CLOSED.

No sockets and no sleeping: the broker runs on a ``Clock``, each socket is
a ``StringTransport``, and the backend is a fake that records its frames.
Client frames are built (masked) by hand; server frames are read back
from what the transport was given.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Mapping, Sequence

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from websockets.frames import Close, Frame, Opcode

from pystrands import wire
from pystrands.broker.config import BrokerConfig
from pystrands.broker.router import Broker
from pystrands.broker.websocket import (
    MAX_HEAD,
    REFUSAL_LINGER,
    SMALL_READ,
    STATUS_RESERVE,
    ClientConnection,
    Stage,
    WebSocketFactory,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HOST = "broker.test:8080"
BASE_HEADERS: dict[str, str] = {
    "Host": HOST,
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}
MASK = b"\x37\xfa\x21\x3d"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


# -- bytes a client sends ----------------------------------------------------------


def request_head(path: str = "/ws/lobby/alice", *, method: str = "GET", protocol: str = "HTTP/1.1",
                 change: Mapping[str, str | None] | None = None,
                 extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """A handshake request head: the base headers, some changed (None drops one), some added."""
    fields = {**BASE_HEADERS, **(change or {})}
    lines = [f"{method} {path} {protocol}"]
    lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
    lines += [f"{name}: {value}" for name, value in extra]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked frame, as a client must send it."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + MASK + bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))


def text(message: str) -> bytes:
    return client_frame(TEXT, message.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    return client_frame(CLOSE, code.to_bytes(2, "big") + reason.encode())


# -- what the server sends back -----------------------------------------------------


def parse_frames(data: bytes) -> list[Frame]:
    """Unmasked server frames, parsed by hand (every write holds whole frames)."""
    frames: list[Frame] = []
    at = 0
    while at < len(data):
        first, second = data[at], data[at + 1]
        assert not second & 0x80, "a server frame must not be masked"
        length, at = second & 0x7F, at + 2
        if length == 126:
            length, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        frames.append(Frame(Opcode(first & 0x0F), data[at:at + length], fin=bool(first & 0x80)))
        at += length
    return frames


def close_code(frame: Frame) -> int:
    assert frame.opcode is Opcode.CLOSE, frame
    return Close.parse(frame.data).code


class HttpAnswer:
    """A refusal (or the 101) the broker wrote: status line, headers, body."""

    def __init__(self, data: bytes) -> None:
        end = data.index(b"\r\n\r\n")
        lines = data[:end].decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.body = data[end + 4:]


# -- the harness ---------------------------------------------------------------------


class FakeBackend:
    """A BackendLink that records the frames the router sends it."""

    def __init__(self) -> None:
        self.load = 0
        self.congested = False
        self.frames: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True

    def decoded(self, action: str | None = None) -> list[dict[str, Any]]:
        frames = [orjson.loads(frame) for frame in self.frames]
        return [frame for frame in frames if action is None or frame["action"] == action]

    def actions(self) -> list[str]:
        return [frame["action"] for frame in self.decoded()]

    def messages(self) -> list[str]:
        return [frame["params"]["message"] for frame in self.decoded(wire.NEW_MESSAGE)]


class Transport(StringTransport):
    """A StringTransport that can also half-close, as TCP transports can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Socket:
    """One connection on the WebSocket port: the protocol and its in-memory transport."""

    def __init__(self, proto: ClientConnection, transport: Transport) -> None:
        self.proto = proto
        self.transport = transport
        self.lost = False
        self._read = 0

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.proto.dataReceived(chunk)

    def hang_up(self) -> None:
        """The socket is gone (as the reactor reports after loseConnection, abort, or a reset)."""
        assert not self.lost
        self.lost = True
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def answer(self) -> HttpAnswer:
        return HttpAnswer(self.transport.value())

    @property
    def paused(self) -> bool:
        return self.transport.producerState == "paused"

    @property
    def closed_by_server(self) -> bool:
        """The server closed the connection, or at least its sending side (after a close frame)."""
        return self.transport.disconnecting or self.transport.write_closed

    def frames(self) -> list[Frame]:
        """The server frames written since the last call (after the 101 response)."""
        data = self.transport.value()
        assert data.startswith(b"HTTP/1.1 101 "), data[:200]
        start = max(self._read, data.index(b"\r\n\r\n") + 4)
        self._read = len(data)
        return parse_frames(data[start:])


class Harness:
    """A broker on a Clock, its WebSocket factory, and one fake backend."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.config = BrokerConfig(**options)
        self.broker = Broker(self.config, self.clock)
        self.backend = FakeBackend()
        self.broker.backend_ready(self.backend)
        assert self.backend.actions() == ["hello"]  # the greeting comes first; the tests read what follows
        self.backend.frames.clear()
        self.factory = WebSocketFactory(self.broker)
        self._ports = itertools.count(40000)

    def connect(self, host: str = "192.0.2.10") -> Socket:
        peer = IPv4Address("TCP", host, next(self._ports))
        # lenient: like a real TCP transport, pausing or resuming after loseConnection is harmless
        transport = Transport(peerAddress=peer, lenient=True)
        proto = self.factory.buildProtocol(peer)
        proto.makeConnection(transport)
        return Socket(proto, transport)

    def handshake(self, head: bytes | None = None, behind: bytes = b"", host: str = "192.0.2.10") -> Socket:
        """A socket that sent a request head (and maybe bytes behind it) in one read."""
        sock = self.connect(host)
        sock.send((request_head() if head is None else head) + behind)
        return sock

    def respond(self, accepted: bool = True, client_id: str = "alice", room_id: str = "lobby",
                metadata: Any = None) -> None:
        """The backend answers the latest connection_request."""
        request = self.backend.decoded(wire.CONNECTION_REQUEST)[-1]
        line = wire.response_frame(request["request_id"], accepted, client_id, room_id, metadata)
        self.broker.backend_frame(wire.decode_frame(line), line, self.backend)

    def open(self, client_id: str = "alice", behind: bytes = b"", host: str = "192.0.2.10") -> Socket:
        """A socket through the handshake, accepted by the backend: OPEN."""
        sock = self.handshake(behind=behind, host=host)
        self.respond(client_id=client_id)
        assert sock.answer.status == 101
        assert sock.proto.stage is Stage.OPEN
        return sock

    def assert_all_released(self) -> None:
        """Nothing is held any more: slots, handshakes, reservations, backend load."""
        assert len(self.factory.slots) == 0
        assert not self.factory.connections
        assert self.broker.handshaking == 0
        assert self.broker.rooms.claimed() == 0
        assert len(self.broker.rooms) == 0
        assert self.backend.load == 0


@pytest.fixture
def broker_log() -> Iterator[list[dict[str, Any]]]:
    """The log events of the broker's modules during the test."""
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("pystrands.broker"):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


# -- 1. HEAD: the handshake timeout ----------------------------------------------------


def test_half_a_head_gets_408_after_the_handshake_timeout_and_its_slot_back() -> None:
    """A socket that never completes its request head gets 408 once handshake_timeout passes."""
    h = Harness(handshake_timeout=4)
    sock = h.connect()
    sock.send(request_head()[:30])
    h.clock.advance(3.9)
    assert sock.transport.value() == b"" and not sock.closed_by_server
    h.clock.advance(0.1)
    assert sock.answer.status == 408
    assert sock.closed_by_server
    assert len(h.factory.slots) == 1
    sock.hang_up()
    h.assert_all_released()
    assert h.backend.frames == []


# -- 2. HEAD: malformed handshakes -------------------------------------------------------

MALFORMED: list[tuple[str, bytes, int]] = [
    ("no-host", request_head(change={"Host": None}), 400),
    ("two-hosts", request_head(extra=[("Host", "other.test")]), 400),
    ("del-in-path", request_head("/ws/lobby/al\x7fice"), 400),
    ("http-1.0", request_head(protocol="HTTP/1.0"), 400),
    ("short-key", request_head(change={"Sec-WebSocket-Key": "c2hvcnQ="}), 400),
    ("no-key", request_head(change={"Sec-WebSocket-Key": None}), 400),
    ("no-upgrade", request_head(change={"Upgrade": None}), 426),
    ("post", request_head(method="POST"), 405),
    ("huge-unfinished-head", b"GET /ws/lobby/alice HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 1), 431),
    ("huge-complete-head", request_head(extra=[("X-Big", "a" * MAX_HEAD)]), 431),
    ("long-request-line", request_head("/ws/lobby/" + "a" * 9000), 414),
    ("long-header-line", request_head(extra=[("X-Long", "a" * 9000)]), 431),
    ("too-many-headers", request_head(extra=[(f"X-{n}", "1") for n in range(200)]), 431),
]


@pytest.mark.parametrize(("head", "status"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_a_malformed_handshake_is_answered_without_asking_a_backend(head: bytes, status: int) -> None:
    """Each malformed handshake gets its HTTP status, no backend frame, and gives everything back."""
    h = Harness()
    sock = h.handshake(head)
    assert sock.answer.status == status
    assert sock.closed_by_server
    assert h.backend.frames == []
    sock.hang_up()
    h.assert_all_released()


def test_post_under_ws_says_which_method_is_allowed() -> None:
    """A POST to /ws/ gets 405 with "Allow: GET" (websockets' answer, passed on)."""
    h = Harness()
    sock = h.handshake(request_head(method="POST"))
    assert sock.answer.status == 405
    assert sock.answer.headers["allow"] == ["GET"]


def test_no_upgrade_header_gets_426_naming_websocket() -> None:
    """A handshake without Upgrade gets 426 with "Upgrade: websocket"."""
    h = Harness()
    sock = h.handshake(request_head(change={"Upgrade": None}))
    assert sock.answer.status == 426
    assert sock.answer.headers["upgrade"] == ["websocket"]


def test_websocket_version_8_gets_426_naming_version_13() -> None:
    """Sec-WebSocket-Version 8 gets 426 with "Sec-WebSocket-Version: 13", and no backend frame."""
    h = Harness()
    sock = h.handshake(request_head(change={"Sec-WebSocket-Version": "8"}))
    answer = sock.answer
    assert answer.status == 426
    assert answer.headers["sec-websocket-version"] == ["13"]
    assert h.backend.frames == []
    sock.hang_up()
    h.assert_all_released()


# -- 3. HEAD: origins ------------------------------------------------------------------------


def test_default_policy_accepts_the_pages_own_origin() -> None:
    """By default an Origin equal to Host's host:port goes on to the backend."""
    h = Harness()
    h.handshake(request_head(extra=[("Origin", f"http://{HOST}")]))
    assert h.backend.actions() == [wire.CONNECTION_REQUEST]


@pytest.mark.parametrize("origin", ["http://evil.test:8080", "null"])
def test_default_policy_refuses_other_origins(origin: str) -> None:
    """By default a foreign origin, or "null", gets 403 without any backend frame."""
    h = Harness()
    sock = h.handshake(request_head(extra=[("Origin", origin)]))
    assert sock.answer.status == 403
    assert h.backend.frames == []
    sock.hang_up()
    h.assert_all_released()


def test_a_wildcard_pattern_allows_subdomains_but_not_the_apex() -> None:
    """allowed_origins=("https://*.example.com",): a subdomain goes on, the apex gets 403."""
    h = Harness(allowed_origins=("https://*.example.com",))
    h.handshake(request_head(extra=[("Origin", "https://chat.example.com")]))
    assert h.backend.actions() == [wire.CONNECTION_REQUEST]
    apex = h.handshake(request_head(extra=[("Origin", "https://example.com")]))
    assert apex.answer.status == 403
    assert h.backend.actions() == [wire.CONNECTION_REQUEST]


# -- 4. HEAD: max_clients and max_clients_per_address --------------------------------------


def test_past_max_clients_a_socket_gets_503_for_its_request() -> None:
    """With max_clients=2 the third socket gets 503 once its head is in; slots come back on close."""
    h = Harness(max_clients=2)
    first, second = h.connect("192.0.2.1"), h.connect("192.0.2.2")
    third = h.connect("192.0.2.3")
    assert third.transport.value() == b"", "answered before its request: the client may miss it"
    third.send(request_head())
    assert third.answer.status == 503
    assert third.closed_by_server
    assert not first.transport.value() and not second.transport.value()
    third.hang_up()
    assert len(h.factory.slots) == 2
    first.hang_up()
    assert len(h.factory.slots) == 1
    assert h.connect("192.0.2.3").transport.value() == b""
    assert len(h.factory.slots) == 2


def test_past_max_clients_per_address_a_socket_gets_429() -> None:
    """With max_clients_per_address=1 a second socket from one host gets 429; other hosts are fine."""
    h = Harness(max_clients_per_address=1)
    first = h.connect("192.0.2.1")
    again = h.connect("192.0.2.1")
    h.clock.advance(REFUSAL_LINGER)  # it never sends a request: the answer comes anyway
    assert again.answer.status == 429 and again.closed_by_server
    other = h.connect("192.0.2.2")
    assert other.transport.value() == b"" and not other.closed_by_server
    again.hang_up()
    first.hang_up()
    other.hang_up()
    assert len(h.factory.slots) == 0
    assert h.connect("192.0.2.1").transport.value() == b""


def test_past_the_limits_the_status_pages_are_still_served_from_a_reserve_of_sockets() -> None:
    """A full broker answers its probes (liveness, readiness) and scrapes; its handshakes still get 503,
    and at most STATUS_RESERVE status sockets are served at once."""
    h = Harness(max_clients=1, max_clients_per_address=1)
    h.connect("192.0.2.1")  # the one slot
    healthz = h.handshake(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n", host="192.0.2.1")
    assert (healthz.answer.status, healthz.answer.body) == (200, b"ok\n")
    readyz = h.handshake(b"GET /readyz?probe=1 HTTP/1.1\r\nHost: b\r\n\r\n", host="192.0.2.2")
    assert (readyz.answer.status, readyz.answer.body) == (200, b"ready\n")
    assert h.handshake(host="192.0.2.3").answer.status == 503  # a WebSocket handshake: refused as before
    assert h.handshake(b"POST /healthz HTTP/1.1\r\nHost: b\r\n\r\n").answer.status == 503
    assert h.handshake(b"GET /static.js HTTP/1.1\r\nHost: b\r\n\r\n").answer.status == 503
    more = [h.handshake(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n") for _ in range(STATUS_RESERVE - 2)]
    assert {sock.answer.status for sock in more} == {200}
    spare = h.handshake(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
    assert spare.answer.status == 503  # the reserve is taken: such sockets stay few
    healthz.hang_up()
    assert h.handshake(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n").answer.status == 200
    assert len(h.factory.slots) == 1


def test_every_socket_over_the_limits_is_counted_once_even_one_that_hangs_up_first() -> None:
    h = Harness(max_clients=1)
    h.connect()  # the one slot
    for _ in range(5):
        h.connect().hang_up()  # a flood of sockets that connect and close before any answer
    h.handshake().hang_up()  # refused, then gone
    served = h.handshake(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")  # served from the reserve: no refusal
    assert served.answer.status == 200
    served.hang_up()
    h.clock.advance(REFUSAL_LINGER)
    assert h.broker.metrics.handshakes["over_limit"] == 6


def refusal_warnings(events: list[dict[str, Any]]) -> list[str]:
    """The text of the warnings about sockets refused on the WebSocket port, from ``broker_log``."""
    return [formatEvent(event) for event in events
            if event.get("log_level") is LogLevel.warn and "WebSocket-port" in event.get("log_format", "")]


def test_refusals_over_the_limits_are_logged_once_a_second_with_a_count(broker_log: list[dict[str, Any]]) -> None:
    h = Harness(max_clients=1)
    h.connect()
    for _ in range(100):
        assert h.handshake().answer.status == 503
    h.clock.advance(1.0)
    h.handshake()
    assert refusal_warnings(broker_log) == [
        "Refused a WebSocket-port connection: too many clients",
        "Refused a WebSocket-port connection: too many clients; 99 more since the last warning"]


def test_refusals_held_back_are_logged_when_the_port_stops(broker_log: list[dict[str, Any]]) -> None:
    h = Harness(max_clients=1)
    h.factory.doStart()
    h.connect()
    for _ in range(3):
        assert h.handshake().answer.status == 503
    h.factory.doStop()
    assert refusal_warnings(broker_log) == [
        "Refused a WebSocket-port connection: too many clients",
        "Refused 2 more WebSocket-port connections since the last warning (the last: too many clients)"]


# -- 5. JUDGING -----------------------------------------------------------------------------


def test_the_socket_is_paused_while_the_backend_judges() -> None:
    """Reading stops while the backend judges, and starts again once it accepted."""
    h = Harness()
    sock = h.handshake()
    assert sock.proto.stage is Stage.JUDGING
    assert sock.paused
    h.respond()
    assert sock.answer.status == 101
    assert not sock.paused


def test_frames_behind_the_head_are_delivered_in_order_after_the_accept() -> None:
    """Frames sent right behind the head wait for the accept, then reach the backend in order."""
    h = Harness()
    sock = h.handshake(behind=text("one") + text("two"))
    sock.send(text("three"))  # a read that still came in while judged
    assert h.backend.actions() == [wire.CONNECTION_REQUEST]
    h.respond()
    assert h.backend.actions() == [wire.CONNECTION_REQUEST, wire.NEW_CONNECTION] + [wire.NEW_MESSAGE] * 3
    assert h.backend.messages() == ["one", "two", "three"]


def test_a_refusal_gets_403() -> None:
    """accepted False gets 403, and nothing stays held."""
    h = Harness()
    sock = h.handshake()
    h.respond(accepted=False)
    assert sock.answer.status == 403
    assert sock.closed_by_server
    sock.hang_up()
    h.assert_all_released()


def test_no_answer_within_auth_timeout_gets_403() -> None:
    """A backend that does not answer within auth_timeout gets the client a 403."""
    h = Harness(auth_timeout=2)
    sock = h.handshake()
    h.clock.advance(1.9)
    assert sock.transport.value() == b""
    h.clock.advance(0.1)
    assert sock.answer.status == 403
    sock.hang_up()
    h.assert_all_released()


def test_a_client_gone_while_judged_then_accepted_gives_its_reservation_back() -> None:
    """A client that hung up while judged, then accepted: its id and backend load are released."""
    h = Harness()
    sock = h.handshake()
    sock.hang_up()
    assert len(h.factory.slots) == 0
    h.respond()
    assert sock.transport.value() == b""
    h.assert_all_released()
    assert wire.NEW_CONNECTION not in h.backend.actions()


def test_too_much_data_while_judged_gets_400_and_the_later_accept_is_abandoned() -> None:
    """More than MAX_HEAD + max_message_size bytes while judged: 400; the accept that follows is undone."""
    h = Harness(max_message_size=1000)
    sock = h.handshake()
    sock.send(b"x" * (MAX_HEAD + 1001))
    assert sock.answer.status == 400
    sock.hang_up()
    h.respond()
    h.assert_all_released()


# -- 6. An exception while opening ------------------------------------------------------------


def _errors(log: list[dict[str, Any]]) -> list[LogLevel]:
    return [event["log_level"] for event in log if event["log_level"] >= LogLevel.error]


def test_an_exception_after_the_101_aborts_and_gives_everything_back(
        monkeypatch: pytest.MonkeyPatch, broker_log: list[dict[str, Any]]) -> None:
    """client_connected raising: error logged (not critical), the upgraded socket aborted, all released."""
    h = Harness()

    def broken(client: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(h.broker, "client_connected", broken)
    sock = h.handshake()
    h.respond()
    assert sock.answer.status == 101  # already written: too late for a 500
    assert sock.transport.disconnected  # aborted
    assert _errors(broker_log) == [LogLevel.error]
    sock.hang_up()
    h.assert_all_released()


def test_an_exception_before_the_101_gets_500_and_gives_everything_back(
        monkeypatch: pytest.MonkeyPatch, broker_log: list[dict[str, Any]]) -> None:
    """An exception before anything was written: error logged (not critical), HTTP 500, all released."""
    h = Harness()
    sock = h.handshake()

    def broken(response: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sock.proto._ws, "send_response", broken)
    h.respond()
    assert sock.answer.status == 500
    assert sock.closed_by_server and not sock.transport.disconnected
    assert _errors(broker_log) == [LogLevel.error]
    assert h.broker.rooms.claimed() == 0 and h.backend.load == 0
    sock.hang_up()
    h.assert_all_released()


# -- 7. OPEN: messages in ---------------------------------------------------------------------


def test_a_fragmented_text_message_is_reassembled() -> None:
    """A text message in three frames (a character split between two, a ping between) arrives whole."""
    h = Harness()
    sock = h.open()
    sock.send(client_frame(TEXT, b"hello w\xc3", fin=False))
    sock.send(client_frame(PING, b"?"))
    sock.send(client_frame(CONT, b"\xb6r", fin=False))
    assert h.backend.messages() == []
    sock.send(client_frame(CONT, b"ld"))
    assert h.backend.messages() == ["hello wörld"]
    assert [(frame.opcode, frame.data) for frame in sock.frames()] == [(Opcode.PONG, b"?")]


def test_more_than_max_fragments_frames_close_with_1009() -> None:
    """With max_fragments=3 a message in 3 frames passes and one in 4 closes the socket with 1009."""
    h = Harness(max_fragments=3)
    sock = h.open()
    sock.send(client_frame(TEXT, b"a", fin=False), client_frame(CONT, b"b", fin=False),
              client_frame(CONT, b"c"))
    assert h.backend.messages() == ["abc"]
    sock.send(client_frame(TEXT, b"a", fin=False), client_frame(CONT, b"b", fin=False),
              client_frame(CONT, b"c", fin=False), client_frame(CONT, b"d"))
    [frame] = sock.frames()
    assert close_code(frame) == 1009
    assert sock.closed_by_server
    assert h.backend.messages() == ["abc"]


def test_invalid_utf8_closes_with_1007() -> None:
    """A text message that is not UTF-8 closes the socket with 1007 and is not delivered."""
    h = Harness()
    sock = h.open()
    sock.send(client_frame(TEXT, b"ok\xff\xfe"))
    [frame] = sock.frames()
    assert close_code(frame) == 1007
    assert sock.closed_by_server
    assert h.backend.messages() == []


def test_messages_read_before_a_text_that_is_not_utf8_are_delivered_and_none_after() -> None:
    """In one read: the messages before the bad one reach the backend in order, then 1007, nothing after."""
    h = Harness()
    sock = h.open()
    sock.send(text("one") + client_frame(BINARY, b"two") + client_frame(TEXT, b"ok\xff") + text("never"))
    [frame] = sock.frames()
    assert close_code(frame) == 1007
    assert h.backend.messages() == ["one", "two"]


def test_a_message_over_max_message_size_closes_with_1009() -> None:
    """A message bigger than max_message_size closes the socket with 1009 and is not delivered."""
    h = Harness(max_message_size=1000)
    sock = h.open()
    sock.send(text("x" * 1000))
    assert h.backend.messages() == ["x" * 1000]
    sock.send(text("x" * 1001))
    [frame] = sock.frames()
    assert close_code(frame) == 1009
    assert sock.closed_by_server
    assert h.backend.messages() == ["x" * 1000]


def test_a_binary_message_reaches_the_backend_as_text() -> None:
    """A binary message reaches the backend as a string (invalid UTF-8 replaced, not refused)."""
    h = Harness()
    sock = h.open()
    sock.send(client_frame(BINARY, "café".encode()), client_frame(BINARY, b"a\xffb"))
    assert h.backend.messages() == ["café", "a\ufffdb"]
    assert sock.frames() == []


# -- 8. Backpressure ----------------------------------------------------------------------------


def test_a_congested_backend_pauses_the_client_until_it_drains() -> None:
    """While its backend is congested a client's messages wait in order, and its next read pauses its socket
    until the drain: what waits is at most one read beyond the one that met the congestion."""
    h = Harness()
    sock = h.open()
    h.backend.congested = True
    sock.send(text("1") + text("2") + text("3"))
    assert h.backend.messages() == ["1"]
    assert not sock.paused
    sock.send(text("4"))
    assert h.backend.messages() == ["1"]
    assert sock.paused
    h.backend.congested = False
    h.broker.backend_drained(h.backend)
    assert h.backend.messages() == ["1", "2", "3", "4"]
    assert not sock.paused


def test_a_read_over_small_read_that_meets_a_wait_pauses_the_socket_at_once() -> None:
    """A busy client (a big read) stops being read as soon as it must wait, as it did before the lazy pause."""
    h = Harness()
    sock = h.open()
    h.backend.congested = True
    messages = [f"{n:04d}" * 250 for n in range(SMALL_READ // 1000 + 1)]  # 1 KB each, past SMALL_READ together
    sock.send(b"".join(text(message) for message in messages))
    assert h.backend.messages() == messages[:1]
    assert sock.paused
    h.backend.congested = False
    h.broker.backend_drained(h.backend)
    assert h.backend.messages() == messages
    assert not sock.paused


def test_a_wait_that_ends_before_the_next_read_never_pauses_the_socket() -> None:
    """The usual congestion: the backend drains within the reactor's next turn; the socket is never paused."""
    h = Harness()
    sock = h.open()
    h.backend.congested = True
    sock.send(text("1") + text("2"))
    h.backend.congested = False
    h.broker.backend_drained(h.backend)
    sock.send(text("3"))
    assert h.backend.messages() == ["1", "2", "3"]
    assert not sock.paused and sock.transport.producerState == "producing"


def test_the_clients_own_full_socket_pauses_its_reading() -> None:
    """While the client's outbox is congested its socket is paused from its next read; the drain resumes it."""
    h = Harness()
    sock = h.open()
    outbox = sock.proto._outbox
    assert outbox is not None
    outbox.pauseProducing()  # as the transport does when its send buffer fills
    sock.send(text("read"))
    assert sock.paused
    assert h.backend.messages() == ["read"]
    outbox.resumeProducing()
    assert not sock.paused


def test_messages_waiting_for_a_congested_backend_still_arrive_when_the_client_leaves() -> None:
    """A client that leaves while paused for its backend: its waiting messages, then disconnected."""
    h = Harness()
    sock = h.open()
    h.backend.congested = True
    sock.send(text("1") + text("2") + text("3"))
    sock.hang_up()
    assert h.backend.messages() == ["1", "2", "3"]
    assert h.backend.actions()[-1] == wire.DISCONNECTED
    h.backend.congested = False
    h.broker.backend_drained(h.backend)  # the client is no longer waiting: nothing happens
    h.assert_all_released()


# -- 9. Keep-alive ----------------------------------------------------------------------------------


def test_pings_go_out_at_each_ping_interval() -> None:
    """With ping_interval=1 a ping is written each second."""
    h = Harness(ping_interval=1, client_idle_timeout=3)
    sock = h.open()
    for _ in range(2):
        assert sock.frames() == []
        h.clock.advance(1)
        assert [frame.opcode for frame in sock.frames()] == [Opcode.PING]


def test_data_from_the_client_resets_its_idleness() -> None:
    """A pong at 2 s moves the idle close from 3 s to 5 s."""
    h = Harness(ping_interval=1, client_idle_timeout=3)
    sock = h.open()
    h.clock.pump([1, 1])
    sock.send(client_frame(PONG))
    h.clock.pump([1, 1, 0.9])
    assert [frame.opcode for frame in sock.frames()] == [Opcode.PING] * 4
    h.clock.advance(0.1)
    [frame] = sock.frames()
    assert close_code(frame) == 1001


def test_silence_closes_with_1001_and_no_answer_aborts() -> None:
    """3 s of silence writes a 1001 close; no answer within handshake_timeout aborts the socket."""
    h = Harness(ping_interval=1, client_idle_timeout=3, handshake_timeout=5)
    sock = h.open()
    h.clock.pump([1, 1])
    assert [frame.opcode for frame in sock.frames()] == [Opcode.PING, Opcode.PING]
    h.clock.advance(1)
    [frame] = sock.frames()
    assert close_code(frame) == 1001
    h.clock.advance(4.9)
    assert not sock.transport.disconnected
    assert sock.frames() == []  # no pings while closing
    h.clock.advance(0.1)
    assert sock.transport.disconnected
    sock.hang_up()
    h.assert_all_released()


# -- 10. Rate limit ----------------------------------------------------------------------------------


def test_past_max_client_rate_messages_wait_and_none_is_lost() -> None:
    """max_client_rate=2: of five messages two go at once, one more each 0.5 s, paused between, in order."""
    h = Harness(max_client_rate=2)
    sock = h.open()
    sent = [f"m{i}" for i in range(5)]
    sock.send(b"".join(text(message) for message in sent[:4]))
    assert h.backend.messages() == sent[:2]
    sock.send(text(sent[4]))
    assert sock.paused
    for delivered in (3, 4):
        h.clock.advance(0.5)
        assert h.backend.messages() == sent[:delivered]
        assert sock.paused
    h.clock.advance(0.5)
    assert h.backend.messages() == sent
    assert not sock.paused


def test_messages_held_back_by_the_rate_limit_still_arrive_when_the_client_leaves() -> None:
    """A client that leaves while rate-paused: its waiting messages reach the backend before disconnected."""
    h = Harness(max_client_rate=1)
    sock = h.open()
    sock.send(text("a") + text("b") + text("c"))
    assert h.backend.messages() == ["a"]
    sock.hang_up()
    assert h.backend.messages() == ["a", "b", "c"]
    assert h.backend.actions()[-1] == wire.DISCONNECTED
    h.clock.advance(5)  # the rate timer went with the socket
    assert h.backend.actions().count(wire.DISCONNECTED) == 1
    h.assert_all_released()


def test_close_during_a_rate_pause_lets_the_clients_answer_be_read() -> None:
    """close() while rate-paused: reading goes on, so the client's close answer can be read."""
    h = Harness(max_client_rate=1, handshake_timeout=5)
    sock = h.open()
    sock.send(text("a") + text("b"), text("c"))  # the second read, while "b" waits, pauses the socket
    assert sock.paused
    sock.proto.close(1000, "bye")
    h.clock.advance(1)  # the rate wait is over
    assert not sock.paused, "reading stays paused: the client's close answer can never be read"
    sock.send(close_frame(1000))
    assert sock.closed_by_server and not sock.transport.disconnected
    sock.hang_up()
    assert h.backend.messages() == ["a", "b", "c"]
    h.assert_all_released()


# -- 11. close() ----------------------------------------------------------------------------------------


def test_router_close_then_the_clients_answer_ends_the_socket_with_one_disconnected_event() -> None:
    """close(code) writes a close frame; the client's answer closes the socket; one disconnected event."""
    h = Harness(handshake_timeout=5)
    sock = h.open()
    sock.proto.close(1000, "bye")
    [frame] = sock.frames()
    assert close_code(frame) == 1000
    assert not sock.closed_by_server
    sock.send(close_frame(1000))
    assert sock.closed_by_server and not sock.transport.disconnected
    sock.hang_up()
    h.clock.advance(10)
    assert not sock.transport.disconnected  # the abort timer went with the socket
    assert h.backend.actions().count(wire.DISCONNECTED) == 1
    assert h.backend.actions()[-1] == wire.DISCONNECTED
    h.assert_all_released()


def test_a_client_initiated_close_is_echoed_and_ends_with_one_disconnected_event() -> None:
    """The client's close frame is echoed, the server's side closed, and disconnected sent once."""
    h = Harness()
    sock = h.open()
    sock.send(close_frame(1000, "done"))
    [frame] = sock.frames()
    assert close_code(frame) == 1000
    assert sock.closed_by_server
    sock.hang_up()
    assert h.backend.actions() == [wire.CONNECTION_REQUEST, wire.NEW_CONNECTION, wire.DISCONNECTED]
    h.assert_all_released()

"""Hostile and busy WebSocket clients against a real embedded broker, one numbered problem per test.

Every broker is a child process (``python -m pystrands server`` with flags,
as a user starts it); every peer is on 127.0.0.1. Raw sockets send exact
bytes where a well-behaved library would refuse to (``RawClient``,
``frame``); ``CountingBackend`` is a raw backend in this process that
accepts every handshake into the room its URL names, counts what it is
sent, and echoes a message starting with ``rt:`` to its sender, so that a
quiet client can time round trips through the backend.

The problems (docs/SECURITY.md says what the broker promises for each):

1. malformed handshakes are answered (400/426) before any backend sees them, and free their slots;
2. a client that floods pings and never reads its pongs is held back (bounded RSS), and dropped at
   ``--client-write-timeout``;
3. fragmentation bombs: ``--max-fragments`` closes with 1009, fragmented messages under it arrive whole;
4. busy clients slow down instead of knocking the backend off, lose nothing, and leave room for others;
   ``--max-client-rate`` throttles without loss;
5. frames sent right behind the handshake request are delivered once the client is admitted;
6. ``Origin`` checks (default: same origin or none; ``--allowed-origins``);
7. handshake-stage limits: ``--handshake-timeout``, sockets still in HTTP count against
   ``--max-clients``, ``--max-clients-per-address``;
8. keep-alive: ``--ping-interval`` and ``--client-idle-timeout``;
9. ``--max-message-size`` cannot exceed what the backend side carries;
10. TLS on both ports through ``--ws-endpoint`` / ``--tcp-endpoint``;
11. every new flag refuses a bad value with exit code 2 and one line naming it.

The flooding clients of problem 4 run in a child process of their own
(``python -m tests.reliability.test_hostile_clients flood ...``, see
``flood``), so that the test's own threads (the backend, the quiet client
timing round trips) do not wait for the interpreter lock behind them.
Every loop is bounded in count and time; the whole module takes about a
minute.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import math
import os
import select
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.reliability.support import (
    TWISTD, Broker, Child, Launch, OpenWs, count, free_port, open_when_served, receive_text, rss_kib, start_broker,
    start_broker_at, upgrade_request, wait_until,
)

HOST = "127.0.0.1"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: base64 of 16 bytes
MASK = b"\x37\xfa\x21\x3d"
TEXT, CONTINUATION, CLOSE, PING = 0x1, 0x0, 0x8, 0x9  # opcodes
GOING_AWAY, MESSAGE_TOO_BIG = 1001, 1009
MiB = 1024 * 1024


# -- raw WebSocket peers -------------------------------------------------------------


def good_request(path: str = "/ws/room", host: str = HOST, *extra: str) -> bytes:
    """A well-formed handshake request for ``path`` with ``Host: host`` and ``extra`` header lines."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def mask(payload: bytes, key: bytes = MASK) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key``, as a client must send it."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame."""
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + MASK + mask(payload)


def close_frame(code: int = 1000) -> bytes:
    return frame(CLOSE, code.to_bytes(2, "big"))


def fragments(parts: list[bytes]) -> bytes:
    """One text message sent as ``parts``: TEXT with FIN=0, then CONTINUATION frames, the last with FIN=1."""
    last = len(parts) - 1
    return b"".join(frame(TEXT if index == 0 else CONTINUATION, part, fin=index == last)
                    for index, part in enumerate(parts))


@dataclass
class Response:
    """An HTTP response head, and whether the broker closed the connection after it."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    closed: bool = False

    def __str__(self) -> str:
        return f"{self.status} {'closed' if self.closed else 'left open'}"


def parse_head(head: bytes) -> Response:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return Response(int(status_line.split()[1]), headers)


class RawClient:
    """A WebSocket client on a plain socket: exact request bytes, masked frames, server frames read one by one."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle/delayed-ACK stalls
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at EOF or reset. Raises socket.timeout past ``deadline``."""
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return False
        self.buffer += data
        return bool(data)

    def response(self, timeout: float = 5.0) -> Response:
        """The HTTP response head (the rest stays in the buffer: frames after a 101)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            try:
                more = self._fill(deadline)
            except socket.timeout:
                raise AssertionError(f"no response head within {timeout}s; got {self.buffer[:200]!r}") from None
            if not more:
                raise AssertionError(f"the broker closed before a response head; got {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return parse_head(head)

    def open(self, path: str, *extra: str) -> RawClient:
        """Complete a handshake on ``path``; fail unless it is accepted."""
        self.send(good_request(path, HOST, *extra))
        response = self.response()
        assert response.status == 101, f"handshake on {path} answered {response.status}"
        return self

    def read_to_end(self, timeout: float = 5.0) -> Response:
        """The response, its body, and whether the broker then closed (EOF or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        response = self.response(timeout)
        try:
            while self._fill(deadline):
                pass
            response.closed = True
        except socket.timeout:
            pass
        response.body, self.buffer = self.buffer, b""
        return response

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload); None if the connection ended. socket.timeout on timeout."""
        deadline = time.monotonic() + timeout

        def need(size: int) -> bool:
            while len(self.buffer) < size:
                if not self._fill(deadline):
                    return False
            return True

        if not need(2):
            return None
        length, header = self.buffer[1] & 0x7F, 2
        if length >= 126:
            header = 4 if length == 126 else 10
            if not need(header):
                return None
            length = int.from_bytes(self.buffer[2:header], "big")
        if not need(header + length):
            return None
        opcode, payload = self.buffer[0] & 0x0F, self.buffer[header:header + length]
        self.buffer = self.buffer[header + length:]
        return opcode, payload

    def close_code(self, timeout: float = 5.0) -> int | None:
        """Skip frames until a close frame: its code (None if the connection ended without one)."""
        deadline = time.monotonic() + timeout
        while (received := self.read_frame(max(0.001, deadline - time.monotonic()))) is not None:
            opcode, payload = received
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        return None

    def close(self) -> None:
        self.sock.close()


def answer(port: int, request: bytes, timeout: float = 5.0) -> Response:
    """Send ``request`` on a fresh socket; the broker's response and whether it then closed."""
    client = RawClient(port, timeout)
    try:
        client.send(request)
        return client.read_to_end(timeout)
    finally:
        client.close()


def handshake_status(port: int, path: str) -> int:
    """The status a fresh, well-formed handshake on ``path`` gets (the socket is then closed)."""
    client = RawClient(port)
    try:
        client.send(good_request(path))
        return client.response().status
    finally:
        client.close()


# -- a backend that counts -----------------------------------------------------------


PROBE = "/ws/ready-probe"


class CountingBackend:
    """A raw backend in this process: accepts every handshake into the room its URL names, counts the rest.

    One thread reads and decodes every line (so its socket backs up if it
    falls behind, as a real backend's would); a ``new_message`` starting with
    ``rt:`` is echoed to its sender as ``echo:<message>``. Handshakes on
    PROBE (see ``wait_ready``) are not counted in ``requests``.
    """

    def __init__(self, tcp_port: int, keep: bool = True) -> None:
        self.sock = socket.create_connection((HOST, tcp_port), timeout=5.0)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.keep = keep
        self.requests = 0
        self.messages = 0
        self.per_room: Counter[str] = Counter()
        self.kept: list[tuple[str, str]] = []  # (room, message), when keep
        self.gone: list[str] = []  # rooms of disconnected clients
        self.closed = threading.Event()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        pending = b""
        try:
            while data := self.sock.recv(1 << 18):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self._handle(orjson.loads(line))
        except OSError:
            pass
        finally:
            self.closed.set()

    def _handle(self, event: dict[str, Any]) -> None:
        action, params = event["action"], event.get("params") or {}
        if action == "connection_request":
            self.requests += params["url"] != PROBE
            self.send({"request_id": event["request_id"], "action": "response", "params": {
                "accepted": True, "client_id": f"client-{next(self._ids)}",
                "room_id": params["url"].rsplit("/", 1)[-1], "metadata": {}}})
        elif action == "new_message":
            context, message = params["context"], params["message"]
            self.messages += 1
            self.per_room[context["room_id"]] += 1
            if self.keep:
                self.kept.append((context["room_id"], message))
            if message.startswith("rt:"):
                self.send({"request_id": "", "action": "message_to_connection",
                           "params": {"conn_id": context["client_id"], "message": f"echo:{message}"}})
        elif action == "disconnected":
            self.gone.append(params["context"]["room_id"])

    def wait_ready(self, broker: Broker) -> CountingBackend:
        """Return once the broker routes handshakes here: a probe on PROBE (not counted) is accepted and gone."""
        wait_until(lambda: handshake_status(broker.ws_port, PROBE) == 101, "the backend to be in use", 10.0,
                   broker.child)
        wait_until(lambda: PROBE.rsplit("/", 1)[-1] in self.gone, "the probe to leave", 5.0, broker.child)
        return self

    def send(self, frame: dict[str, Any]) -> None:
        with self._lock:
            self.sock.sendall(orjson.dumps(frame) + b"\n")

    def messages_of(self, room: str) -> list[str]:
        return [message for where, message in list(self.kept) if where == room]

    def close(self) -> None:
        self.sock.close()


def round_trip(ws: ClientConnection, token: str, timeout: float = 10.0) -> float:
    """Seconds for ``rt:<token>`` to go through the backend and come back."""
    started = time.monotonic()
    ws.send(f"rt:{token}")
    receive_text(ws, lambda message: message == f"echo:rt:{token}", timeout)
    return time.monotonic() - started


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share / 100 * len(ordered)) - 1)]


def ms(samples: list[float]) -> str:
    return f"median {percentile(samples, 50) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"


def served(broker: Broker, open_ws: OpenWs, room: str = "quiet") -> ClientConnection:
    """A websockets client in ``room``, once a backend answers."""
    return open_when_served(open_ws, f"{broker.ws_url}/{room}")


# -- 1. malformed handshakes ------------------------------------------------------------

_GOOD = upgrade_request("/ws/room")
BAD_HANDSHAKES: dict[str, tuple[bytes, int]] = {
    "no Host": (_GOOD.replace(b"Host: 127.0.0.1\r\n", b""), 400),
    "two Hosts": (_GOOD.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nHost: 127.0.0.2\r\n"), 400),
    "0x7F in the path": (upgrade_request("/ws/ro\x7fom"), 400),
    "HTTP/1.0": (_GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
    "key of 8 bytes": (_GOOD.replace(KEY.encode(), b"dG9vc2hvcnQ="), 400),
    "key not base64": (_GOOD.replace(KEY.encode(), b"not*base64*at*all*!!"), 400),
    "version 8": (_GOOD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
    "no Upgrade": (b"GET /ws/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426),
}
#: How many of each kind, as the issue asks. 10,000 took 1.7 to 3.8 s a kind on a busy 2-core machine
#: (about 22 s for the 8 kinds, 30 s with the brokers' starts): inside the module's budget, so no kind is cut
#: to 1,000. Lower it here if CI needs the time.
BAD_TIMES = dict.fromkeys(BAD_HANDSHAKES, 10_000)
#: Sockets at a time. Each may briefly hold two slots (the broker frees one when it sees the client's close,
#: just as the next socket arrives): 4 senders stay under --max-clients 10.
SENDERS = 4


def outcomes(port: int, request: bytes, times: int, version_header: bool, budget: float) -> Counter[str]:
    """Send ``request`` on ``times`` fresh sockets, SENDERS at a time, within ``budget`` seconds; outcome counts
    (``version_header``: a response without ``Sec-WebSocket-Version: 13`` is counted as such)."""
    deadline = time.monotonic() + budget

    def sender(share: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(share):
            if time.monotonic() > deadline:
                seen["not sent: out of time"] += 1
                continue
            try:
                response = answer(port, request)
            except (OSError, AssertionError) as exc:
                seen[f"failed: {type(exc).__name__}"] += 1
                continue
            if version_header and response.headers.get("sec-websocket-version") != "13":
                seen["426 without Sec-WebSocket-Version: 13"] += 1
            else:
                seen[str(response)] += 1
        return seen

    shares = [times // SENDERS + (index < times % SENDERS) for index in range(SENDERS)]
    with ThreadPoolExecutor(SENDERS) as pool:
        return sum(pool.map(sender, shares), Counter())


@pytest.mark.parametrize("kind", list(BAD_HANDSHAKES))
def test_1_malformed_handshakes_are_answered_before_any_backend_and_free_their_slots(
        launch: Launch, open_ws: OpenWs, kind: str) -> None:
    """BAD_TIMES[kind] malformed handshakes get 400 (426 for the version or no Upgrade) and a close; no
    backend hears of them; afterwards all 10 slots of --max-clients 10 are free."""
    broker = start_broker(launch, "--max-clients", "10")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    request, expected = BAD_HANDSHAKES[kind]
    first = answer(broker.ws_port, request)  # one alone first: a wrong answer fails fast, not 10,000 times
    assert (first.status, first.closed) == (expected, True), f"{kind}: {first} {first.body[:200]!r}"
    version_header = kind == "version 8"
    if version_header:
        assert first.headers.get("sec-websocket-version") == "13", first.headers

    started = time.monotonic()
    seen = outcomes(broker.ws_port, request, BAD_TIMES[kind], version_header, budget=45.0)
    took = time.monotonic() - started
    print(f"\n{kind}: {BAD_TIMES[kind]:,} handshakes in {took:.1f}s: {dict(seen)}")
    assert seen == Counter({f"{expected} closed": BAD_TIMES[kind]})
    assert backend.requests == 0, f"a backend was asked about {backend.requests} malformed handshakes"

    clients = [served(broker, open_ws, f"room-{index}") for index in range(10)]  # every slot is free again
    assert round_trip(clients[-1], "after") < 1.0
    assert broker.child.process.poll() is None


# -- 2. pong flood -----------------------------------------------------------------------

PING_CHUNK = frame(PING, b"p" * 125) * 500  # 65,500 bytes: 500 pings, each owed a 127-byte pong


@dataclass
class PingFlood:
    """A thread sending PING_CHUNKs on ``client`` for ``seconds``, never reading; notes when it is cut off."""

    client: RawClient
    seconds: float
    sent: int = 0
    cut_after: float | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sock, view, offset = self.client.sock, memoryview(PING_CHUNK), 0
        sock.settimeout(0.1)
        started = time.monotonic()
        while time.monotonic() - started < self.seconds:
            try:
                sent = sock.send(view[offset:])
            except socket.timeout:
                continue  # the broker is not reading: what the fix is about
            except OSError:
                self.cut_after = time.monotonic() - started
                return
            self.sent += sent
            offset = (offset + sent) % len(PING_CHUNK)

    def join(self) -> None:
        self.thread.join(self.seconds + 5.0)


def test_2_a_ping_flood_from_a_client_that_never_reads_is_held_back(launch: Launch, open_ws: OpenWs) -> None:
    """4 s of pings from a client that never reads its pongs: the broker's RSS grows by under 30 MiB and
    another client's round trips stay fast."""
    broker = start_broker(launch)
    backend = CountingBackend(broker.tcp_port, keep=False).wait_ready(broker)
    quiet = served(broker, open_ws)
    flooder = RawClient(broker.ws_port).open("/ws/flood")
    pid = broker.child.process.pid
    before = peak = rss_kib(pid)
    flood = PingFlood(flooder, seconds=4.0)
    latencies = []
    for index in itertools.count():
        if not flood.thread.is_alive() or index >= 200:
            break
        latencies.append(round_trip(quiet, f"during-{index}"))
        peak = max(peak, rss_kib(pid))
        time.sleep(0.05)
    flood.join()
    latencies += [round_trip(quiet, f"after-{index}") for index in range(5)]
    peak = max(peak, rss_kib(pid))
    print(f"\nping flood: {flood.sent / MiB:.1f} MiB of pings taken; broker RSS +{(peak - before) / 1024:.1f} MiB;"
          f" round trips {ms(latencies)}")
    assert peak - before < 30 * 1024, f"the broker grew by {(peak - before) / 1024:.0f} MiB"
    assert max(latencies) < 0.5, ms(latencies)
    assert broker.child.process.poll() is None
    assert backend.requests == 2


def test_2_a_client_whose_socket_stays_unwritable_is_dropped_at_client_write_timeout(
        launch: Launch, open_ws: OpenWs) -> None:
    """--client-write-timeout 2: the ping flooder that never reads is cut off within a few seconds, and
    its backend hears it went."""
    broker = start_broker(launch, "--client-write-timeout", "2")
    backend = CountingBackend(broker.tcp_port, keep=False).wait_ready(broker)
    quiet = served(broker, open_ws)
    flood = PingFlood(RawClient(broker.ws_port).open("/ws/flood"), seconds=10.0)
    flood.join()
    assert flood.cut_after is not None, f"still connected after {flood.seconds}s of unread pongs"
    print(f"\nthe flooder was cut off {flood.cut_after:.1f}s into its flood")
    assert flood.cut_after < 6.0
    wait_until(lambda: "flood" in backend.gone, "the flooder's disconnected event", 5.0, broker.child)
    assert round_trip(quiet, "after") < 0.5


# -- 3. fragmentation -----------------------------------------------------------------------

def one_byte_fragments(size: int) -> bytes:
    """A text message of ``size`` bytes as ``size`` 1-byte frames (7 bytes each on the wire)."""
    first, middle, last = (frame(TEXT, b"b", fin=False), frame(CONTINUATION, b"b", fin=False),
                           frame(CONTINUATION, b"b"))
    return first + middle * (size - 2) + last


def bomb(port: int, path: str, data: bytes, timeout: float = 10.0) -> int | None:
    """Handshake on ``path``, send ``data`` until the broker answers; the close code it sends (or None)."""
    client = RawClient(port)
    try:
        client.open(path)
        view = memoryview(data)
        client.sock.settimeout(1.0)
        deadline = time.monotonic() + timeout
        for start in range(0, len(view), 65536):
            if select.select([client.sock], [], [], 0)[0] or time.monotonic() > deadline:
                break  # the broker said something (its close frame)
            try:
                client.sock.sendall(view[start:start + 65536])
            except OSError:
                break
        return client.close_code(max(0.1, deadline - time.monotonic()))
    finally:
        client.close()


BOMBS = 20


def test_3_a_fragmentation_bomb_is_closed_with_1009_and_others_stay_served(
        launch: Launch, open_ws: OpenWs) -> None:
    """A 1 MiB message in 1-byte fragments, BOMBS times: each is closed with 1009 (default --max-fragments
    1024) and never reaches the backend; another client's round trips stay under 100 ms throughout."""
    broker = start_broker(launch)
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    quiet = served(broker, open_ws)
    codes: list[int | str | None] = []
    data = one_byte_fragments(MiB)

    def bombard() -> None:
        for index in range(BOMBS):
            try:
                codes.append(bomb(broker.ws_port, f"/ws/bomb-{index}", data))
            except (OSError, AssertionError) as exc:
                codes.append(repr(exc))
            if codes[-1] != MESSAGE_TOO_BIG:
                return  # one is enough to fail, and each may take its full timeout

    bombing = threading.Thread(target=bombard, daemon=True)
    bombing.start()
    latencies = []
    deadline = time.monotonic() + 30.0
    while bombing.is_alive() and time.monotonic() < deadline:
        latencies.append(round_trip(quiet, f"during-{len(latencies)}", timeout=2.0))
        time.sleep(0.01)
    bombing.join(1.0)
    latencies += [round_trip(quiet, f"after-{index}", timeout=2.0) for index in range(20)]
    print(f"\nfragmentation bombs: close codes {codes}; round trips {ms(latencies)}")
    assert codes == [MESSAGE_TOO_BIG] * BOMBS
    assert not [room for room, _ in backend.kept if room.startswith("bomb-")], "a bomb was delivered"
    assert max(latencies) < 0.1, ms(latencies)


def test_3_a_message_in_1000_fragments_arrives_whole(launch: Launch) -> None:
    """1,000 fragments of 100 bytes (under --max-fragments 1024): one 100,000-byte message, intact and in order."""
    broker = start_broker(launch)
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    parts = [f"{index:04d}".encode().ljust(100, b"-") for index in range(1000)]
    client = RawClient(broker.ws_port).open("/ws/pieces")
    client.send(fragments(parts))
    wait_until(lambda: backend.per_room["pieces"] >= 1, "the fragmented message at the backend", 10.0, broker.child)
    assert backend.messages_of("pieces") == [b"".join(parts).decode()]
    client.send(close_frame())
    assert client.close_code() == 1000


def test_3_max_fragments_5_closes_a_6_fragment_message_with_1009(launch: Launch) -> None:
    """--max-fragments 5: a 5-fragment message is delivered; a 6-fragment one gets close code 1009, undelivered."""
    broker = start_broker(launch, "--max-fragments", "5")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    five = RawClient(broker.ws_port).open("/ws/five")
    five.send(fragments([b"a", b"b", b"c", b"d", b"e"]))
    six = RawClient(broker.ws_port).open("/ws/six")
    six.send(fragments([b"1", b"2", b"3", b"4", b"5", b"6"]))
    assert six.close_code() == MESSAGE_TOO_BIG
    five.send(frame(TEXT, b"marker"))  # the broker read six's last fragment before this: an event would be ahead
    wait_until(lambda: backend.per_room["five"] >= 2, "the 5-fragment message and the marker", 5.0, broker.child)
    assert backend.messages_of("five") == ["abcde", "marker"]
    assert backend.messages_of("six") == []


# -- 4. busy clients ------------------------------------------------------------------------

FLOOD_SECONDS = 3.0
MESSAGE = b"x" * 1024


def flood(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """Open ``clients`` raw clients (rooms flood-<i>), send 1 KB text messages on each as fast as its socket
    takes them for ``seconds``, finish the frame under way, close cleanly; the messages sent per room.

    Runs in a child process (see ``main``); prints ``flooding`` once every client is open.
    """
    one = frame(TEXT, MESSAGE)
    chunk = one * 64
    peers = [RawClient(port, timeout=10.0) for _ in range(clients)]
    for index, peer in enumerate(peers):  # every handshake at once: one after the other waits on each round trip
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # less of a tail in flight
        peer.send(good_request(f"/ws/flood-{index}"))
    statuses = Counter(peer.response(10.0).status for peer in peers)
    assert statuses == {101: clients}, statuses
    print("flooding", flush=True)
    sent = [0] * clients  # bytes
    with selectors.DefaultSelector() as selector:
        for index, peer in enumerate(peers):
            peer.sock.setblocking(False)
            selector.register(peer.sock, selectors.EVENT_WRITE, index)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, _ in selector.select(0.05):
                index = key.data
                try:
                    sent[index] += key.fileobj.send(chunk[sent[index] % len(chunk):])  # type: ignore[union-attr]
                except BlockingIOError:
                    pass
    for index, peer in enumerate(peers):
        peer.sock.settimeout(15.0)
        offset = sent[index] % len(chunk)
        rest = -sent[index] % len(one)
        peer.sock.sendall(chunk[offset:offset + rest] + close_frame())
        sent[index] += rest
    for peer in peers:
        peer.close_code(15.0)
        peer.close()
    return {f"flood-{index}": size // len(one) for index, size in enumerate(sent)}


def flooder(launch: Launch, broker: Broker, clients: int) -> Child:
    """The flood of ``clients`` clients as a child process, once they are all open."""
    child = launch(["-m", "tests.reliability.test_hostile_clients", "flood", "--port", str(broker.ws_port),
                    "--clients", str(clients), "--seconds", str(FLOOD_SECONDS)], name=f"flooder-{clients}")
    child.wait_for_output("flooding", timeout=30.0)
    return child


@pytest.mark.parametrize("clients", [2, 100])
def test_4_busy_clients_slow_down_instead_of_knocking_the_backend_off(
        launch: Launch, open_ws: OpenWs, clients: int) -> None:
    """``clients`` clients send 1 KB messages flat out for FLOOD_SECONDS: the backend stays connected and gets
    every message sent, a newcomer gets in within --auth-timeout, a quiet client's p99 round trip < 250 ms."""
    auth_timeout = 3.0
    broker = start_broker(launch, "--auth-timeout", str(auth_timeout))
    backend = CountingBackend(broker.tcp_port, keep=False).wait_ready(broker)
    quiet = served(broker, open_ws)
    child = flooder(launch, broker, clients)
    wait_until(lambda: backend.messages > 100, "the flood to reach the backend", 10.0, broker.child)

    started = time.monotonic()
    try:
        newcomer = open_ws(f"{broker.ws_url}/newcomer")
    except InvalidStatus as refused:
        raise AssertionError(f"a newcomer was refused during the flood: {refused}") from None
    handshake = time.monotonic() - started
    latencies = []
    for index in range(50):  # spread over the flood
        latencies.append(round_trip(quiet, f"quiet-{index}", timeout=2.0))
        time.sleep(0.03)
    assert child.process.wait(FLOOD_SECONDS + 40.0) == 0, child.output()[-2000:]
    sent = json.loads(child.output().strip().splitlines()[-1])
    total = sum(sent.values())
    wait_until(lambda: all(backend.per_room[room] >= number for room, number in sent.items()),
               "the tail of the flood", 10.0, broker.child)
    print(f"\n{clients} busy clients: {total:,} messages sent and received; newcomer's handshake"
          f" {handshake * 1000:.0f} ms; quiet round trips {ms(latencies)},"
          f" p99 {percentile(latencies, 99) * 1000:.1f} ms")
    assert {room: backend.per_room[room] for room in sent} == sent, "messages lost or duplicated"
    assert not backend.closed.is_set() and count(broker.child, "Dropped backend") == 0, broker.child.output()[-2000:]
    assert handshake < auth_timeout
    assert percentile(latencies, 99) < 0.25, ms(latencies)
    assert round_trip(newcomer, "newcomer") < 1.0


def test_4_max_client_rate_throttles_a_client_without_loss(launch: Launch) -> None:
    """--max-client-rate 100: 300 messages written at once take about 2 s to reach the backend, all in order."""
    broker = start_broker(launch, "--max-client-rate", "100")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    client = RawClient(broker.ws_port, timeout=15.0).open("/ws/rated")
    messages = [f"m-{index:03d}-".ljust(200, "r") for index in range(300)]
    data = b"".join(frame(TEXT, message.encode()) for message in messages)
    started = time.monotonic()
    writer = threading.Thread(target=client.send, args=(data,), daemon=True)  # blocks while the broker holds back
    writer.start()
    wait_until(lambda: backend.per_room["rated"] >= 300, "300 rated messages", 12.0, broker.child)
    took = time.monotonic() - started
    writer.join(5.0)
    print(f"\n300 messages at --max-client-rate 100 took {took:.2f}s")
    assert backend.messages_of("rated") == messages
    assert took >= 1.8, "not throttled"


# -- 5. frames right behind the handshake ----------------------------------------------------------

def test_5_frames_sent_with_the_handshake_request_are_delivered_in_order(launch: Launch) -> None:
    """The request and 3 text frames in one write, before the 101: the backend gets the 3 messages, in order."""
    broker = start_broker(launch)
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    client = RawClient(broker.ws_port)
    client.send(good_request("/ws/eager") + frame(TEXT, b"one") + frame(TEXT, b"two") + frame(TEXT, b"three"))
    assert client.response().status == 101
    wait_until(lambda: backend.per_room["eager"] >= 3, "the 3 early messages", 5.0, broker.child)
    assert backend.messages_of("eager") == ["one", "two", "three"]


# -- 6. origins ---------------------------------------------------------------------------------

LISTED = ("--allowed-origins", "https://*.example.com,http://localhost:3000")
ORIGIN_CASES = [
    ((), None, 101),
    ((), "same", 101),  # http://127.0.0.1:<ws port>, the Host of the request
    ((), "http://evil.example", 403),
    ((), "null", 403),
    (LISTED, "https://app.example.com", 101),
    (LISTED, "https://example.com.evil.net", 403),
    (LISTED, "http://localhost:3000", 101),
    (("--allowed-origins", "*"), "http://evil.example", 101),
    (("--allowed-origins", "*"), "null", 403),  # '*' is any origin but null
    (("--allowed-origins", "null"), "null", 101),
]


@pytest.fixture(scope="module")
def origin_brokers(module_launch: Launch) -> Iterator[Callable[[tuple[str, ...]], tuple[Broker, CountingBackend]]]:
    """get(flags) -> (broker, backend), one pair per set of flags, shared by the module."""
    started: dict[tuple[str, ...], tuple[Broker, CountingBackend]] = {}

    def get(flags: tuple[str, ...]) -> tuple[Broker, CountingBackend]:
        if flags not in started:
            broker = start_broker(module_launch, *flags, name=f"broker-origins-{len(started)}")
            started[flags] = broker, CountingBackend(broker.tcp_port).wait_ready(broker)
        return started[flags]

    yield get
    for _, backend in started.values():
        backend.close()


@pytest.mark.parametrize(("flags", "origin", "status"), ORIGIN_CASES,
                         ids=[f"{'listed' if flags == LISTED else flags[-1] if flags else 'default'}-{origin}"
                              for flags, origin, _ in ORIGIN_CASES])
def test_6_origins_are_checked_before_any_backend_hears_of_the_handshake(
        origin_brokers: Callable[[tuple[str, ...]], tuple[Broker, CountingBackend]],
        flags: tuple[str, ...], origin: str | None, status: int) -> None:
    """The handshake with this Origin (Host 127.0.0.1:<port>) gets ``status``; a refused one reaches no backend."""
    broker, backend = origin_brokers(flags)
    host = f"{HOST}:{broker.ws_port}"
    origin = f"http://{host}" if origin == "same" else origin
    before = backend.requests
    client = RawClient(broker.ws_port)
    try:
        client.send(good_request("/ws/origins", host, *([f"Origin: {origin}"] if origin is not None else [])))
        assert client.response().status == status
    finally:
        client.close()
    assert backend.requests - before == (1 if status == 101 else 0)


# -- 7. handshake-stage limits ----------------------------------------------------------------------

def test_7_a_trickled_request_head_is_cut_at_handshake_timeout(launch: Launch) -> None:
    """--handshake-timeout 1: a request sent a byte every 0.3 s gets 408 or a close within ~1.5 s."""
    broker = start_broker(launch, "--handshake-timeout", "1")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    sock = socket.create_connection((HOST, broker.ws_port), timeout=5.0)
    started, received, ended = time.monotonic(), b"", False
    try:
        for byte in good_request("/ws/slow"):
            if time.monotonic() - started > 4.0:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                ended = True
                break
            if select.select([sock], [], [], 0.3)[0]:
                sock.settimeout(2.0)
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                except (ConnectionResetError, socket.timeout):
                    pass
                ended = True
                break
    finally:
        sock.close()
    took = time.monotonic() - started
    print(f"\ntrickled request: ended after {took:.2f}s with {received[:40]!r}")
    assert ended and took < 2.0, f"still open after {took:.1f}s"
    assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:200]
    assert backend.requests == 0


def test_7_sockets_still_in_http_count_against_max_clients(launch: Launch) -> None:
    """--max-clients 5: with 5 silent sockets open, a 6th (real) handshake gets 503; once they close, it gets in."""
    broker = start_broker(launch, "--max-clients", "5")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    silent = [socket.create_connection((HOST, broker.ws_port), timeout=5.0) for _ in range(5)]
    try:
        time.sleep(0.3)  # let the broker accept them
        refused = answer(broker.ws_port, good_request("/ws/sixth"))
        assert refused.status == 503, refused
        assert backend.requests == 0
    finally:
        for sock in silent:
            sock.close()
    wait_until(lambda: handshake_status(broker.ws_port, "/ws/later") == 101, "a handshake once the silent"
               " sockets closed", 5.0, broker.child)


def test_7_max_clients_per_address_answers_429(launch: Launch, open_ws: OpenWs) -> None:
    """--max-clients-per-address 3: with 3 clients open from 127.0.0.1, a 4th gets 429; once one leaves, a 4th
    gets in."""
    broker = start_broker(launch, "--max-clients-per-address", "3")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    first, *others = [served(broker, open_ws, f"room-{index}") for index in range(3)]
    refused = answer(broker.ws_port, good_request("/ws/fourth"))
    assert (refused.status, backend.requests) == (429, 3), refused
    first.close()
    wait_until(lambda: handshake_status(broker.ws_port, "/ws/fourth") == 101, "a 4th client once one left",
               5.0, broker.child)
    assert round_trip(others[0], "still") < 1.0


# -- 8. keep-alive ------------------------------------------------------------------------------

def test_8_a_silent_client_is_pinged_then_closed_while_a_ponging_one_stays(launch: Launch, open_ws: OpenWs) -> None:
    """--ping-interval 0.5 --client-idle-timeout 1.5: a raw client that never sends gets pings, then close 1001,
    and is cut off when it does not answer the close within --handshake-timeout (1 s); a websockets
    client, which answers pings, is still there after 3.5 s."""
    broker = start_broker(launch, "--ping-interval", "0.5", "--client-idle-timeout", "1.5", "--handshake-timeout", "1")
    backend = CountingBackend(broker.tcp_port).wait_ready(broker)
    lively = served(broker, open_ws, "lively")
    silent = RawClient(broker.ws_port).open("/ws/silent")
    started = time.monotonic()
    seen: list[tuple[float, int, bytes]] = []
    try:
        while (received := silent.read_frame(max(0.001, started + 5.0 - time.monotonic()))) is not None:
            seen.append((time.monotonic() - started, *received))
        ended = time.monotonic() - started
    except socket.timeout:
        ended = math.inf
    finally:
        silent.close()
    print(f"\nsilent client: {[(round(at, 2), hex(opcode)) for at, opcode, _ in seen]}, ended after {ended:.2f}s")
    opcodes = [opcode for _, opcode, _ in seen]
    assert PING in opcodes and CLOSE in opcodes and opcodes.index(PING) < opcodes.index(CLOSE), opcodes
    close_payload = next(payload for _, opcode, payload in seen if opcode == CLOSE)
    assert int.from_bytes(close_payload[:2], "big") == GOING_AWAY
    assert ended < 3.5, f"the silent client's connection lasted {ended:.1f}s"
    wait_until(lambda: "silent" in backend.gone, "the broker to report the silent client gone", 5.0, broker.child)
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    assert round_trip(lively, "still-here") < 1.0
    assert "lively" not in backend.gone


# -- 9. limits agree -----------------------------------------------------------------------------

def run_server(*flags: str, timeout: float = 10.0) -> tuple[int | None, str]:
    """``python -m pystrands server`` on free ports with ``flags``: (exit status or None if it ran on, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pystrands", "server", "--ws-port", str(free_port()), "--tcp-port", str(free_port()),
         *flags], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")})
    try:
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=5.0)
        return None, stderr.decode(errors="replace")


def refusal_problem(flag: str, value: str, status: int | None, stderr: str) -> str | None:
    """What is wrong with how the broker refused ``flag value`` (None: exit 2, one line naming the flag)."""
    lines = stderr.strip().splitlines()
    if status is None:
        return f"{flag} {value!r}: the broker started"
    if status != 2 or len(lines) != 1 or flag not in lines[0]:
        return f"{flag} {value!r}: exit status {status}, stderr {stderr.strip()!r}"
    return None


def test_9_a_max_message_size_beyond_the_backend_line_limit_is_refused_at_start() -> None:
    """--max-message-size 17000000 (its event could not fit a 16 MiB backend line): exit 2, one line naming it."""
    status, stderr = run_server("--max-message-size", "17000000", timeout=5.0)
    assert refusal_problem("--max-message-size", "17000000", status, stderr) is None, stderr


# -- 10. TLS --------------------------------------------------------------------------------------

def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (key.pem, cert.pem, a folder holding only cert.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path, trusted = directory / "key.pem", directory / "cert.pem", directory / "trusted"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    trusted.mkdir()
    (trusted / "cert.pem").write_bytes(cert_path.read_bytes())
    return key_path, cert_path, trusted


def test_10_tls_on_both_ports(launch: Launch, tmp_path: Path) -> None:
    """ssl: endpoints on both ports: a wss:// client and a backend over TLS (twistd, trusting the certificate)
    exchange a message."""
    key, cert, trusted = self_signed(tmp_path)
    ws_port, tcp_port = free_port(), free_port()
    tls = f"interface={HOST}:privateKey={key}:certKey={cert}"
    broker = start_broker_at(launch, "--ws-endpoint", f"ssl:{ws_port}:{tls}",
                             "--tcp-endpoint", f"ssl:{tcp_port}:{tls}", ws_port=ws_port, tcp_port=tcp_port)
    # tls:, not ssl: Twisted's ssl: client endpoint takes caCertsDir= (and hostname=), not trustRoots=
    launch([str(TWISTD), "-n", "--pidfile=", "pystrands", "--backend", "tests.reliability.faces.TwistedFace",
            "--broker", f"tls:host={HOST}:port={tcp_port}:trustRoots={trusted}"], name="tls-backend")
    # Ready first, so that the clients below are admitted, not refused (refusals over TLS are
    # tests/broker/test_tls_refusals.py's).
    wait_until(lambda: readyz_over_tls(ws_port, cert) == 200, "the broker to have its TLS backend", 20.0, broker.child)
    ws = open_wss(f"wss://{HOST}:{ws_port}/ws/secure", ssl.create_default_context(cafile=str(cert)))
    as_a_browser = ssl.create_default_context(cafile=str(cert))
    as_a_browser.set_alpn_protocols(["h2", "http/1.1"])  # every browser offers ALPN: HTTP/1.1 is chosen
    browser = open_wss(f"wss://{HOST}:{ws_port}/ws/browser", as_a_browser)
    try:
        ws.send("over tls")
        receive_text(ws, lambda message: message == "echo:over tls")
        browser.send("with alpn")
        receive_text(browser, lambda message: message == "echo:with alpn")
        assert browser.socket.selected_alpn_protocol() == "http/1.1"
    finally:
        ws.close()
        browser.close()


def readyz_over_tls(port: int, cert: Path) -> int:
    """The status of ``GET /readyz`` on the broker's TLS WebSocket port (0 when it gave no answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"https://{HOST}:{port}/readyz", timeout=5,
                                    context=ssl.create_default_context(cafile=str(cert))) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)
    except OSError:
        return 0


def open_wss(url: str, context: ssl.SSLContext, timeout: float = 20.0) -> ClientConnection:
    """A wss:// client, retried while the broker answers 503 (its TLS backend not yet connected)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(url, ssl=context, open_timeout=5, close_timeout=1).__enter__()  # as open_client
        except InvalidStatus as refused:
            if refused.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- 11. bad values at the command line -------------------------------------------------------------

NEW_NUMBERS = ["--max-fragments", "--max-clients-per-address", "--handshake-timeout", "--ping-interval",
               "--client-idle-timeout", "--client-write-timeout", "--max-client-rate"]
BAD_VALUES = [(flag, value) for flag in NEW_NUMBERS for value in ("-1", "many")] + [
    ("--ws-endpoint", "bogus:1"), ("--tcp-endpoint", "bogus:1"), ("--ws-endpoint", "tcp:notaport"),
    ("--allowed-origins", "example.com"),  # a pattern is scheme://host[:port]
]


def test_11_each_new_flag_refuses_a_bad_value_with_one_line_naming_it() -> None:
    """Negative or non-numeric numbers, unparseable endpoints, an origin without a scheme: exit 2, one line."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: (*case, *run_server(*case, timeout=10.0)), BAD_VALUES))
    problems = [problem for flag, value, status, stderr in results
                if (problem := refusal_problem(flag, value, status, stderr)) is not None]
    assert not problems, "\n".join(problems)


def test_11_each_new_flag_accepts_a_good_value(launch: Launch, open_ws: OpenWs) -> None:
    """All new flags at once with sensible values (plain tcp: endpoints): the broker starts and carries a message,
    so the refusals above are about the values, not unknown flags."""
    ws_port, tcp_port = free_port(), free_port()
    broker = start_broker_at(
        launch, "--ws-endpoint", f"tcp:{ws_port}:interface={HOST}",
        "--tcp-endpoint", f"tcp:{tcp_port}:interface={HOST}",
        "--max-fragments", "64", "--max-clients-per-address", "50", "--handshake-timeout", "5",
        "--ping-interval", "10", "--client-idle-timeout", "30", "--client-write-timeout", "5",
        "--max-client-rate", "1000", "--allowed-origins", "https://*.example.com,http://localhost:3000",
        ws_port=ws_port, tcp_port=tcp_port)
    CountingBackend(broker.tcp_port).wait_ready(broker)
    assert round_trip(served(broker, open_ws), "flags") < 1.0


# -- the flooding child process ---------------------------------------------------------------------

def main() -> None:
    """``python -m tests.reliability.test_hostile_clients flood --port P --clients N --seconds S``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["flood"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    print(json.dumps(flood(args.port, args.clients, args.seconds)), flush=True)


if __name__ == "__main__":
    main()

"""Hostile and busy WebSocket clients against a real broker process: the reviewer's figures, tree by tree.

Run with the dev venv's Python, from the repository root:

    .venv/bin/python benchmarks/hostile.py --tree /tmp/before --tree .   # old broker vs this checkout
    .venv/bin/python benchmarks/hostile.py --quick                      # smoke run, ~20 s a tree
    add --bad N (malformed handshakes, default 200) or --busy 2 20 50 (busy client counts).

Each ``--tree`` is a source tree (a checkout or a ``git worktree`` of an older
commit); without one, this checkout. Every scenario starts a fresh broker,
``python -m pystrands server``, with the tree as its working directory and
PYTHONPATH, on free ports of 127.0.0.1, and kills it at the end. Beside it
run a raw TCP backend (a thread here: it accepts every handshake into the
room named by the path, counts ``new_message`` events and echoes those of
room ``quiet``), a quiet client of room ``quiet`` that times one round trip
every 50 ms, and the load itself, in a process of its own so that its GIL
does not slow the measuring side. The reviewer's figures for the old broker
are in brackets:

1. slot leak: ``--max-clients 10``; ``--bad`` handshakes without a Host
   header, 20 at a time, each given 1 s to be answered; then one
   well-formed handshake. [no answer; after 10 of them, every client 503]
2. pong flood: a client that never reads (SO_RCVBUF 4 KiB) sends masked
   125-byte pings as fast as it can for 10 s: broker RSS, whether the client
   is dropped, the quiet client's round trips. [38 -> 224 MiB in 25 s]
3. fragmentation bomb: a 1 MiB text message in 1-byte fragments, sent as
   fast as possible for at most 20 s: broker CPU, the close code, the quiet
   client's round trips. [~80 s at 100% CPU, other clients wait 3-15 s]
4. busy clients: ``--busy`` clients (2, then 20) send 1 KB messages as fast
   as they can for 10 s (not echoed): backend drops, messages sent vs
   received after a 5 s tail, a new client's handshake mid-flood, the quiet
   client's round trips. [backend dropped 4 times in 15 s, 133,791 events
   lost, new clients 503]

Figures print as each scenario ends, then a table, one column per tree.
Linux only (``/proc``, ``TCP_INFO``). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
TCP_ESTABLISHED = 1
#: A masking key for the frames built by hand (any 4 bytes will do).
MASK = b"\x37\xfa\x21\x3d"
#: Messages of a busy client.
BUSY_MESSAGE = "x" * 1024
#: Fragments of the fragmentation bomb: one per byte of a 1 MiB message.
BOMB_FRAGMENTS = MIB
#: Seconds after which the quiet client gives up on a round trip and counts it as unanswered.
PROBE_TIMEOUT = 5.0

Figures = dict[str, str]


@dataclass(frozen=True)
class Settings:
    """Counts and durations of one run (``--quick`` shortens them)."""

    bad: int
    flood_seconds: float
    bomb_cap: float
    busy: tuple[int, ...]
    busy_seconds: float
    tail_seconds: float
    #: How long the flooding client goes on not reading after its flood, before we look whether it was dropped.
    drop_grace: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            return cls(bad=args.bad or 40, flood_seconds=2, bomb_cap=3, busy=tuple(args.busy),
                       busy_seconds=2, tail_seconds=1, drop_grace=1)
        return cls(bad=args.bad or 200, flood_seconds=10, bomb_cap=20, busy=tuple(args.busy),
                   busy_seconds=10, tail_seconds=5, drop_grace=2)


# -- the broker process -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Broker:
    """``python -m pystrands server`` of a source tree on free ports of 127.0.0.1; killed on exit."""

    def __init__(self, tree: Path, *flags: str) -> None:
        self.ws_port, self.tcp_port = free_port(), free_port()
        handle, log = tempfile.mkstemp(prefix="hostile-broker-", suffix=".log")
        os.close(handle)
        self.log = Path(log)
        env = {name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")}
        env.update(PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "pystrands", "server", "--ws-port", str(self.ws_port),
                "--tcp-port", str(self.tcp_port), "--ws-interface", HOST, "--tcp-interface", HOST, *flags]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(args, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)

    def __enter__(self) -> Broker:
        deadline = time.monotonic() + 20.0
        while "PyStrands broker:" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the broker did not start:\n{self.output()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.kill()
        self.process.wait(10.0)
        self.log.unlink(missing_ok=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_mib(self) -> float:
        """Resident memory, from /proc/PID/status."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
        return int(kib) / 1024

    def cpu_seconds(self) -> float:
        """User and system CPU time so far, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# -- the backend -------------------------------------------------------------------------


class RawBackend:
    """A backend on a plain socket, served by a thread; reconnects (and counts it) when the broker drops it.

    A handshake on ``/ws/<room>`` joins ``<room>`` as a new client. Messages
    are counted; those of room ``quiet`` are echoed to their sender. Only the
    lines that need it are parsed, so that the backend keeps up with the broker.
    """

    def __init__(self, tcp_port: int) -> None:
        self.tcp_port = tcp_port
        self.messages = 0  # new_message events, every room
        self.quiet = 0  # new_message events of room quiet
        self.drops = 0
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._sock = self._connect()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close()

    @property
    def others(self) -> int:
        """new_message events of every room but quiet."""
        return self.messages - self.quiet

    def _connect(self) -> socket.socket:
        """A connection to the broker's backend port, retried for 5 s (the broker may still be starting)."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return socket.create_connection((HOST, self.tcp_port), timeout=10.0)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._read()
            except OSError:
                pass
            if self._stop.is_set():
                return
            self.drops += 1
            self._sock.close()
            self._sock = self._connect()

    def _read(self) -> None:
        """Handle lines until the broker closes the connection (or we stop)."""
        sock, buffer = self._sock, bytearray()
        while not self._stop.is_set():
            if not select.select([sock], [], [], 0.2)[0]:
                continue
            data = sock.recv(MIB)
            if not data:
                return
            buffer += data
            end = buffer.rfind(b"\n") + 1
            if end:
                self._lines(bytes(buffer[:end]))
                del buffer[:end]

    def _lines(self, lines: bytes) -> None:
        """Count the messages among complete lines in bulk; parse only the lines to answer."""
        self.messages += lines.count(b'"new_message"')  # inside a JSON string, the quotes would be escaped
        if b"quiet" not in lines and b'"connection_request"' not in lines:
            return
        for line in lines.split(b"\n"):
            if b'"connection_request"' in line:
                frame = json.loads(line)
                room = frame["params"]["url"].rsplit("/", 1)[-1]
                self._send("response", frame["request_id"], accepted=True,
                           client_id=f"{room}-{next(self._ids)}", room_id=room, metadata={})
            elif b"quiet" in line and b'"new_message"' in line:
                params = json.loads(line)["params"]
                if params["context"]["room_id"] == "quiet":
                    self.quiet += 1
                    self._send("message_to_connection", conn_id=params["context"]["client_id"],
                               message=params["message"])

    def _send(self, action: str, request_id: str = "r", **params: Any) -> None:
        frame = {"request_id": request_id, "action": action, "params": params}
        self._sock.sendall(json.dumps(frame).encode() + b"\n")


# -- the quiet client --------------------------------------------------------------------


@dataclass
class Latency:
    """Round-trip times in seconds, and the round trips that never completed."""

    samples: list[float] = field(default_factory=list)
    unanswered: int = 0

    def describe(self) -> str:
        lost = f", {self.unanswered} unanswered within {PROBE_TIMEOUT:g} s" if self.unanswered else ""
        if not self.samples:
            return f"no round trip completed{lost}"
        ordered = sorted(self.samples)
        return (f"p50 {_duration(percentile(ordered, 0.50))}, p99 {_duration(percentile(ordered, 0.99))},"
                f" max {_duration(ordered[-1])} ({len(ordered)} round trips{lost})")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


class Prober:
    """A client of room ``quiet``: from ``start()``, one echoed round trip every ``INTERVAL`` s until stopped."""

    INTERVAL = 0.05

    def __init__(self, ws_port: int) -> None:
        self._ws = open_client(ws_port, "quiet")
        self._ws.send("warm-up")  # a connection's first round trip waits for a delayed ACK (~40 ms): not counted
        if self._ws.recv(timeout=10.0) != "warm-up":
            raise RuntimeError("the quiet client's warm-up message did not come back")
        self._stop = threading.Event()
        self.latency = Latency()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self._ws.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Latency:
        """Stop probing once the round trip under way is done (or timed out)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PROBE_TIMEOUT + 5.0)
        return self.latency

    def _run(self) -> None:
        for number in itertools.count():
            text = f"probe {number}"
            started = time.monotonic()
            try:
                self._ws.send(text)
                answered = self._await(text, started + PROBE_TIMEOUT)
            except ConnectionClosed:
                self.latency.unanswered += 1
                return
            if answered:
                self.latency.samples.append(time.monotonic() - started)
            else:
                self.latency.unanswered += 1
            if self._stop.wait(self.INTERVAL):
                return

    def _await(self, text: str, deadline: float) -> bool:
        """Whether the echo of ``text`` came back before ``deadline`` (late echoes of earlier ones are skipped)."""
        while time.monotonic() < deadline:
            try:
                if self._ws.recv(timeout=0.2) == text:
                    return True
            except TimeoutError:
                continue
        return False


def open_client(ws_port: int, room: str, timeout: float = 10.0) -> ClientConnection:
    """A connected ``websockets`` client of ``/ws/<room>``, without compression (close it yourself)."""
    return connect(f"ws://{HOST}:{ws_port}/ws/{room}", open_timeout=timeout, close_timeout=2,
                   compression=None, ping_interval=None).__enter__()  # entered, as websockets wants


def handshake(ws_port: int, room: str, timeout: float = 10.0) -> str:
    """The outcome of a well-formed handshake ("101", "503", ...) and how long it took."""
    started = time.monotonic()
    try:
        open_client(ws_port, room, timeout).close()
        outcome = "101"
    except InvalidStatus as exc:
        outcome = str(exc.response.status_code)
    except (InvalidHandshake, OSError) as exc:  # TimeoutError is an OSError
        outcome = f"failed ({type(exc).__name__})"
    return f"{outcome} in {time.monotonic() - started:.2f} s"


# -- raw WebSocket clients ---------------------------------------------------------------


def upgrade_request(path: str, host: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", *([f"Host: {HOST}"] if host else []), "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame (masked) with a payload under 126 bytes; ``first_byte`` is FIN and opcode."""
    assert len(payload) < 126
    masked = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
    return bytes([first_byte, 0x80 | len(payload)]) + MASK + masked


def open_raw(ws_port: int, room: str, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking socket that completed a WebSocket handshake on ``/ws/<room>``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10.0)
    sock.connect((HOST, ws_port))
    sock.sendall(upgrade_request(f"/ws/{room}"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the broker closed the socket during the handshake")
        head += chunk
    status_line = head.partition(b"\r\n")[0]
    if not status_line.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {status_line.decode(errors='replace')}")
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Pumped:
    """What :func:`pump` sent, for how long, and why it stopped: deadline, done, answer or reset."""

    sent: int
    seconds: float
    ended: str


def pump(sock: socket.socket, data: bytes, deadline: float, repeat: bool = False,
         watch_reads: bool = False) -> Pumped:
    """Send ``data`` (over and over if ``repeat``) as fast as the socket takes it, until ``deadline``.

    With ``watch_reads``, stop as soon as the peer sends something. ``data``
    must hold whole frames, so that repeating it keeps the stream well framed.
    """
    view, offset, sent, started = memoryview(data), 0, 0, time.monotonic()
    readers = [sock] if watch_reads else []
    while (left := deadline - time.monotonic()) > 0:
        readable, writable, _ = select.select(readers, [sock], [], min(left, 0.1))
        if readable:
            return Pumped(sent, time.monotonic() - started, "answer")
        if not writable:
            continue
        try:
            count = sock.send(view[offset:offset + MIB])
        except BlockingIOError:
            continue
        except OSError:
            return Pumped(sent, time.monotonic() - started, "reset")
        offset, sent = offset + count, sent + count
        if offset == len(view):
            if not repeat:
                return Pumped(sent, time.monotonic() - started, "done")
            offset = 0
    return Pumped(sent, time.monotonic() - started, "deadline")


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer closed or reset the connection, seen without reading (the TCP state)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED


def await_close(sock: socket.socket, deadline: float) -> str:
    """How the broker ends this WebSocket before ``deadline``: its close code, a reset, or nothing."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], min(left, 0.1))[0]:
            continue
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            return "reset"
        if not chunk:
            return "closed without a close frame"
        data += chunk
        code = close_code(data)
        if code is not None:
            return f"close code {code}"
    return "no close"


def close_code(data: bytes) -> int | None:
    """The code of the first close frame among the server frames (unmasked) in ``data``, if complete."""
    pos = 0
    while pos + 2 <= len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if pos + size > len(data):
                return None
            length, pos = int.from_bytes(data[pos:pos + size], "big"), pos + size
        if pos + length > len(data):
            return None
        if opcode == 0x8:
            return int.from_bytes(data[pos:pos + 2], "big") if length >= 2 else 1005
        pos += length
    return None


def malformed_handshake(ws_port: int) -> str:
    """The status of the answer to a handshake without Host, within 1 s, or "no answer"."""
    with socket.create_connection((HOST, ws_port), timeout=1.0) as sock:
        sock.sendall(upgrade_request("/ws/x", host=False))
        answer, deadline = b"", time.monotonic() + 1.0
        while b"\r\n\r\n" not in answer and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except OSError:  # a timeout or a reset
                break
            if not chunk:
                break
            answer += chunk
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "no answer"


# -- loads: each in a process of its own --------------------------------------------------


class Load:
    """``target(ready, *args)`` in a child process: it calls ``ready()`` once loaded, then returns figures."""

    def __init__(self, target: Callable[..., dict[str, Any]], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe(duplex=False)
        self._process = context.Process(target=_run_load, args=(child_end, target, args), daemon=True)
        self._process.start()
        child_end.close()

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5.0)

    def ready(self, timeout: float = 30.0) -> None:
        self._expect("ready", timeout)

    def running(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the result; whether it is still to come."""
        return not self._conn.poll(timeout)

    def result(self, timeout: float) -> dict[str, Any]:
        return self._expect("result", timeout)

    def _expect(self, kind: str, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the load sent no {kind} within {timeout} s")
        try:
            got, value = self._conn.recv()
        except EOFError:
            raise RuntimeError("the load process died") from None
        if got != kind:
            raise RuntimeError(f"the load failed: {value}" if got == "error" else f"the load sent {got}")
        return value


def _run_load(conn: Any, target: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("result", target(lambda: conn.send(("ready", None)), *args)))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def flood_pings(ready: Callable[[], None], ws_port: int, seconds: float, grace: float) -> dict[str, Any]:
    """Send 125-byte pings for ``seconds`` without ever reading; then whether the broker dropped us."""
    sock = open_raw(ws_port, "flood", rcvbuf=4096)
    ready()
    pings = masked_frame(0x89, b"p" * 125) * 1024
    started = time.monotonic()
    pumped = pump(sock, pings, started + seconds, repeat=True)
    if pumped.ended == "reset":
        return {"sent": pumped.sent, "dropped_after": pumped.seconds}
    while time.monotonic() < started + seconds + grace:
        if peer_closed(sock):
            return {"sent": pumped.sent, "dropped_after": time.monotonic() - started}
        time.sleep(0.05)
    return {"sent": pumped.sent, "dropped_after": None}


def send_fragments(ready: Callable[[], None], ws_port: int, cap: float) -> dict[str, Any]:
    """Send a 1 MiB text message in 1-byte fragments for ``cap`` seconds at most; how it ended."""
    middle = masked_frame(0x00, b"a")
    bomb = masked_frame(0x01, b"a") + middle * (BOMB_FRAGMENTS - 2) + masked_frame(0x80, b"a")
    sock = open_raw(ws_port, "bomb")
    ready()
    started = time.monotonic()
    pumped = pump(sock, bomb, started + cap, watch_reads=True)
    ending = "reset" if pumped.ended == "reset" else await_close(sock, started + cap)
    return {"fragments": pumped.sent // len(middle), "writing": pumped.seconds, "ending": ending,
            "ended": time.monotonic() - started}


def send_busily(ready: Callable[[], None], ws_port: int, count: int, seconds: float) -> dict[str, Any]:
    """``count`` clients send 1 KB messages as fast as they can for ``seconds``; how many went out."""
    clients = [open_client(ws_port, "busy") for _ in range(count)]
    sent = [0] * count
    closed = [False] * count

    def send(index: int, deadline: float) -> None:
        ws = clients[index]
        try:
            while time.monotonic() < deadline:
                ws.send(BUSY_MESSAGE)
                sent[index] += 1
        except ConnectionClosed:
            closed[index] = True
        ws.close()

    ready()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=send, args=(index, deadline), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + 10.0 - time.monotonic()))
    return {"sent": sum(sent), "disconnected": sum(closed)}


# -- the scenarios -----------------------------------------------------------------------


def slot_leak(tree: Path, settings: Settings) -> Figures:
    with Broker(tree, "--max-clients", "10") as broker, RawBackend(broker.tcp_port):
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: malformed_handshake(broker.ws_port), range(settings.bad)))
        time.sleep(1.0)  # the last sockets' ends reach the broker
        then = handshake(broker.ws_port, "late")
    tally = ", ".join(f"{status}: {n}" for status, n in sorted(Counter(answers).items()))
    answered = sum(answer != "no answer" for answer in answers)
    return {"handshakes without Host answered": f"{answered}/{settings.bad} ({tally})",
            "then a well-formed handshake": then}


def pong_flood(tree: Path, settings: Settings) -> Figures:
    seconds = settings.flood_seconds
    with Broker(tree) as broker, RawBackend(broker.tcp_port), \
            Prober(broker.ws_port) as prober:
        before = peak = broker.rss_mib()
        with Load(flood_pings, broker.ws_port, seconds, settings.drop_grace) as load:
            load.ready()
            prober.start()
            while load.running(0.25):
                peak = max(peak, broker.rss_mib())
            flood = load.result(0)
        after = broker.rss_mib()
        latency = prober.stop()
    dropped = flood["dropped_after"]
    return {"broker RSS before / peak / after": f"{before:.0f} / {peak:.0f} / {after:.0f} MiB",
            "flooding client": (f"dropped after {dropped:.1f} s" if dropped is not None
                                else f"still connected after {seconds + settings.drop_grace:.0f} s")
            + f"; {flood['sent'] / MIB:.1f} MiB of pings sent in {seconds:.0f} s",
            "quiet client round trip": latency.describe()}


def fragment_bomb(tree: Path, settings: Settings) -> Figures:
    with Broker(tree) as broker, RawBackend(broker.tcp_port) as backend, \
            Prober(broker.ws_port) as prober:
        with Load(send_fragments, broker.ws_port, settings.bomb_cap) as load:
            load.ready()
            prober.start()
            cpu, started = broker.cpu_seconds(), time.monotonic()
            bomb = load.result(settings.bomb_cap + 30.0)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))  # a few round trips at least
        cpu, window = broker.cpu_seconds() - cpu, time.monotonic() - started
        latency = prober.stop()
        delivered = backend.others > 0
    return {"bomb": f"{bomb['fragments']:,} of {BOMB_FRAGMENTS:,} fragments written in {bomb['writing']:.1f} s;"
                    f" {bomb['ending']} after {bomb['ended']:.1f} s",
            "broker CPU": f"{cpu:.1f} s in {window:.1f} s ({100 * cpu / window:.0f}%)",
            "message reached the backend": "yes" if delivered else "no",
            "quiet client round trip": latency.describe()}


def busy_clients(tree: Path, settings: Settings, count: int) -> Figures:
    seconds = settings.busy_seconds
    with Broker(tree) as broker, RawBackend(broker.tcp_port) as backend, \
            Prober(broker.ws_port) as prober:
        with Load(send_busily, broker.ws_port, count, seconds) as load:
            load.ready()
            prober.start()
            time.sleep(seconds / 2)
            newcomer = handshake(broker.ws_port, "newcomer")
            busy = load.result(seconds + 30.0)
        latency = prober.stop()
        time.sleep(settings.tail_seconds)
        received, drops = backend.others, backend.drops
    disconnected = f"; {busy['disconnected']} busy clients disconnected" if busy["disconnected"] else ""
    return {"backend connection dropped": f"{drops} time{'' if drops == 1 else 's'}",
            "1 KB messages sent / reached the backend": f"{busy['sent']:,} / {received:,}"
            f" ({busy['sent'] - received:,} lost, {received / seconds:,.0f}/s){disconnected}",
            "new client's handshake mid-flood": newcomer,
            "quiet client round trip": latency.describe()}


def scenarios(settings: Settings) -> list[tuple[str, str, Callable[[Path], Figures]]]:
    """(table title, reviewer's old figures, run) of each scenario."""
    return [
        (f"1. slot leak ({settings.bad} bad)", "no answer, slot leaked; after 10, every new client 503",
         partial(slot_leak, settings=settings)),
        (f"2. pong flood ({settings.flood_seconds:g} s)", "RSS 38 -> 224 MiB in 25 s",
         partial(pong_flood, settings=settings)),
        (f"3. fragment bomb (cap {settings.bomb_cap:g} s)", "~80 s at 100% CPU, other clients wait 3-15 s",
         partial(fragment_bomb, settings=settings)),
        *((f"4. busy clients x{count} ({settings.busy_seconds:g} s)",
           "backend dropped 4 times in 15 s, 133,791 events lost, new clients 503",
           partial(busy_clients, settings=settings, count=count)) for count in settings.busy),
    ]


# -- output ------------------------------------------------------------------------------


def table(results: list[tuple[str, list[Figures]]], labels: list[str]) -> str:
    """A Markdown table: a row per figure, grouped by scenario, a column per tree."""
    rows = [["scenario", "figure", *labels]]
    for title, per_tree in results:
        names = list(dict.fromkeys(name for figures in per_tree for name in figures))
        for index, name in enumerate(names):
            rows.append([title if index == 0 else "", name, *(figures.get(name, "-") for figures in per_tree)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def run(trees: list[Path], labels: list[str], settings: Settings) -> list[tuple[str, list[Figures]]]:
    """Every scenario, each on every tree in turn; figures printed as they come."""
    results = []
    for title, reviewer, scenario in scenarios(settings):
        per_tree = []
        for tree, label in zip(trees, labels):
            print(f"\n{title} [{label}]  (reviewer, old broker: {reviewer})", flush=True)
            try:
                figures = scenario(tree)
            except Exception as exc:
                figures = {"error": f"{type(exc).__name__}: {exc}"}
            for name, value in figures.items():
                print(f"    {name}: {value}", flush=True)
            per_tree.append(figures)
        results.append((title, per_tree))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--tree", action="append", help="source tree of a broker (repeat to compare;"
                        " default: this checkout)")
    parser.add_argument("--quick", action="store_true", help="shorter durations, for a smoke run")
    parser.add_argument("--bad", type=int, help="malformed handshakes of scenario 1 (default 200, quick 40)")
    parser.add_argument("--busy", type=int, nargs="+", default=[2, 20], help="busy client counts of scenario 4")
    args = parser.parse_args(argv)
    labels = args.tree or [str(REPO)]
    trees = [Path(label).resolve() for label in labels]
    for tree in trees:
        if not (tree / "pystrands" / "__main__.py").is_file():
            parser.error(f"{tree} is not a source tree of pystrands")
    settings = Settings.from_args(args)
    started = time.monotonic()
    results = run(trees, labels, settings)
    print(f"\n{table(results, labels)}\n\n({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A raw-frame WebSocket load generator cheap enough not to be the bottleneck, and its own ceiling.

    python benchmarks/wsload.py load --url ws://127.0.0.1:P/ws/bench --clients 100 --scenario echo
    python benchmarks/wsload.py load --url 'ws://127.0.0.1:P/ws/bench?room=r{room}' --scenario room
    python benchmarks/wsload.py serve --port P     # the do-nothing echo / room server (the ceiling)

The load of both the broker benchmark (``broker_bench.py``) and the cluster
benchmark (``cluster.py``). ``load`` starts ``--procs`` worker processes (this
file, ``worker``), each with its share of the clients on a plain
``asyncio.Protocol`` per socket: no WebSocket library, every frame it sends
built and masked once before the run (the mask is fixed per client, which RFC
6455 allows a client to do and a server cannot tell), every frame it receives
read from its 2-byte header. Workers connect their clients, say ``ready``, and
are told on stdin when the measured window starts and ends (``time.monotonic``
is one clock for every process of the machine); a message counts if it arrives
inside the window. Each prints one JSON line: messages received, round trips in
microseconds.

A client's URL is a template: ``{client}`` becomes its number, ``{room}`` its
room (number % ``--rooms``). With several URLs (``--url`` again, one per node
of a cluster) client n connects to URL n // rooms % (their count), so that the
members of a room alternate between the nodes as a load balancer would spread
them. A handshake the server refuses (a cluster node answers 503 until it hears
of a backend) is tried again every 0.2 s until the timeout.

Scenarios (``--scenario``):

``echo``
    Each client keeps one message in flight: send, wait for its echo, repeat.
``room``
    Each client keeps one of its own messages in flight, and counts every
    message of its room it receives: one message sent is ``members`` delivered.
``flood``
    Each client keeps ``--window`` messages in flight, sending as many as came
    back, in one write, after each read: the sender never waits for a round trip.

Round trips are matched per client in order (the broker keeps each client's
order), so the flood's are the time in queues.

``serve`` is the harness's ceiling: one asyncio process that does the least a
WebSocket server can (handshake, header parse, unmask with ``websockets``' C
``apply_mask``, one write of its answers per read), echoing each message, or
on a ``?room=`` socket sending it to every member of the room.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from processes import ChildFailed, cpu_seconds, process
from websockets.speedups import apply_mask

SCENARIOS = ("echo", "room", "flood")
KEY = base64.b64encode(b"pystrands-bench!").decode()  # any 16 bytes will do for a benchmark
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECTS_AT_ONCE = 50
READ_SIZE = 1 << 16


def handshake_request(path: str, host: str) -> bytes:
    """A client's opening handshake for ``path`` on ``host`` (always the same key: a benchmark checks no accept)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def client_frame(payload: bytes, mask: bytes) -> bytes:
    """One masked text frame, as a client sends it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return header + mask + apply_mask(payload, mask)


def server_frame(payload: bytes) -> bytes:
    """One unmasked text frame, as a server sends it."""
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x81, length) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def frames(buffer: bytearray, masked: bool) -> tuple[list[tuple[int, bytes]], int]:
    """The complete frames at the start of ``buffer`` as (opcode, payload), and the bytes they took."""
    found, at, end = [], 0, len(buffer)
    while end - at >= 2:
        length = buffer[at + 1] & 0x7F
        start = at + 2
        if length == 126:
            if end - start < 2:
                break
            length = int.from_bytes(buffer[start:start + 2], "big")
            start += 2
        elif length == 127:
            if end - start < 8:
                break
            length = int.from_bytes(buffer[start:start + 8], "big")
            start += 8
        if masked:
            start += 4
        if end - start < length:
            break
        payload = bytes(buffer[start:start + length])
        if masked:
            payload = apply_mask(payload, buffer[start - 4:start])
        found.append((buffer[at] & 0x0F, payload))
        at = start + length
    return found, at


# -- the load generator's clients ----------------------------------------------


class Client(asyncio.BufferedProtocol):
    """One WebSocket client: handshake, then the scenario's send and receive loop.

    It reads into its worker's one chunk (``asyncio.BufferedProtocol``):
    asyncio's plain ``Protocol`` makes a 256 KiB ``bytes`` per read, which
    glibc maps, shrinks and unmaps (3 system calls a read, most of what this
    generator cost per message).
    """

    def __init__(self, worker: Worker, index: int, path: str, host: str) -> None:
        self.worker = worker
        mask = os.urandom(4)
        self.payload = f"{index:08d}".encode() + b"x" * max(0, worker.size - 8)
        self.frame = client_frame(self.payload, mask)
        self.request = handshake_request(path, host)
        self.pong = b"\x8a\x80" + mask
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.sent: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the handshake request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the worker's chunk, whose bytes ``buffer_updated`` takes at once."""
        return self.worker.chunk

    def buffer_updated(self, nbytes: int) -> None:
        """The handshake's answer, then frames."""
        buffer = self.buffer
        buffer += self.worker.chunk[:nbytes]
        if self.handshaking:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():  # the refusal's body may come in a later read
                    status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
                    self.opened.set_exception(ConnectionRefusedError(status.decode(errors="replace")))
                return
            self.handshaking = False
            del buffer[:end + 4]
            self.opened.set_result(None)
        found, used = frames(buffer, masked=False)
        if used:
            del buffer[:used]
            self.worker.received(self, found)

    def connection_lost(self, exc: Exception | None) -> None:
        """A socket lost during the run fails the run."""
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self.worker.lost(exc)

    def send(self, count: int) -> None:
        """Send ``count`` of this client's frame in one write, noting when."""
        now = time.perf_counter()
        self.sent.extend([now] * count)
        assert self.transport is not None
        self.transport.write(self.frame * count if count > 1 else self.frame)


class Worker:
    """A process's share of the clients and what they measured inside the window."""

    def __init__(self, scenario: str, size: int, window: int) -> None:
        self.scenario, self.size, self.window = scenario, size, window
        self.clients: list[Client] = []
        self.running = False
        self.start = self.end = 0.0
        self.count = 0
        self.times: list[float] = []
        self.failure: str | None = None
        #: What each read of any of its clients goes into (one loop, one read at a time).
        self.chunk = memoryview(bytearray(READ_SIZE))

    async def connect(self, urls: list[str], first: int, count: int, rooms: int) -> None:
        """Open ``count`` clients (numbered from ``first``), a few at a time, each on its URL (module docstring)."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def open_one(index: int) -> Client:
            parts = urlsplit(urls[index // rooms % len(urls)].format(client=index, room=index % rooms))
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            async with gate:
                while True:
                    _, client = await loop.create_connection(
                        lambda: Client(self, index, path, parts.netloc), parts.hostname or "", parts.port or 80)
                    try:
                        await client.opened
                        return client
                    except ConnectionError:  # refused (503 while a node knows no backend) or cut: again
                        assert client.transport is not None
                        client.transport.close()
                    await asyncio.sleep(0.2)

        self.clients = list(await asyncio.gather(*(open_one(first + i) for i in range(count))))

    def go(self, start: float, end: float) -> None:
        """Start sending; count what arrives from ``start`` to ``end`` (monotonic seconds)."""
        self.start, self.end, self.running = start, end, True
        for client in self.clients:
            client.send(self.window if self.scenario == "flood" else 1)

    def received(self, client: Client, found: list[tuple[int, bytes]]) -> None:
        """Count and time the data frames ``client`` read; answer pings; send what the scenario says."""
        now = time.monotonic()
        inside = self.start <= now <= self.end
        answered = 0
        for opcode, payload in found:
            if opcode == 0x9:
                assert client.transport is not None
                client.transport.write(client.pong)
                continue
            if opcode not in (0x1, 0x2):
                continue
            if inside:
                self.count += 1
            if self.scenario == "room" and payload != client.payload:
                continue
            sent = client.sent.popleft()
            if inside:
                self.times.append(time.perf_counter() - sent)
            answered += 1
        if answered and self.running and now < self.end:
            client.send(answered)

    def lost(self, exc: Exception | None) -> None:
        """Note a socket lost while measuring."""
        if self.running and time.monotonic() < self.end and self.failure is None:
            self.failure = f"a socket closed during the run: {exc!r}"


async def run_worker(args: argparse.Namespace) -> None:
    """Connect, say ready, wait for ``go START END``, run, print the JSON result."""
    worker = Worker(args.scenario, args.size, args.window)
    await asyncio.wait_for(worker.connect(args.url, args.first, args.clients, args.rooms), args.timeout)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    start, end = map(float, line.split()[1:3])
    worker.go(start, end)
    await asyncio.sleep(max(0.0, end - time.monotonic()) + 0.05)
    worker.running = False
    result = {"count": worker.count, "times_us": [round(t * 1e6, 1) for t in worker.times],
              "failure": worker.failure}
    print(json.dumps(result), flush=True)
    for client in worker.clients:
        if client.transport is not None:
            client.transport.abort()


# -- the coordinator ---------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at ``fraction`` of a sorted list (0.0 if empty)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def load(url: str | Sequence[str], scenario: str, clients: int, seconds: float, *, procs: int = 2,
         rooms: int = 10, size: int = 100, window: int = 32, warmup: float = 0.5,
         watch: dict[str, list[int]] | None = None, timeout: float = 120.0,
         at_start: Callable[[], object] = lambda: None, at_end: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Run a scenario on ``url`` (or one URL per node; module docstring): what was delivered, round trips, CPU shares.

    Figures: ``delivered`` messages and ``round_trips`` (a client's own
    message back) in the window, and each per second; ``p50_us``/``p99_us``
    round trip; ``load_cpu``, the workers' CPU; for each ``watch`` name (its
    pids, their child processes counted too) ``NAME_cpu`` and
    ``NAME_us_per_msg``, its CPU microseconds per delivered message. CPU shares
    are in cores (1.0 = one core busy for the whole window), read from
    ``/proc`` at the window's two ends. ``at_start`` and ``at_end`` are called
    as the window opens and closes. A run in which no message came back is a
    ChildFailed, as is a worker that fails.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
    if clients < 1 or procs < 1 or seconds <= 0:
        raise ValueError("clients, procs and seconds must be positive")
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no URL to load")
    for each in urls:
        parts = urlsplit(each)
        if parts.scheme != "ws" or not parts.hostname or not parts.port:
            raise ValueError(f"a URL must be ws://HOST:PORT/PATH, not {each!r}")
    procs = min(procs, clients)
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    firsts = [sum(shares[:i]) for i in range(procs)]
    with ExitStack() as stack:
        workers = []
        for number, (first, share) in enumerate(zip(firsts, shares, strict=True)):
            command = [sys.executable, str(Path(__file__).resolve()), "worker", "--scenario", scenario,
                       "--clients", str(share), "--first", str(first), "--rooms", str(rooms), "--size", str(size),
                       "--window", str(window), "--timeout", str(timeout)]
            command += [argument for each in urls for argument in ("--url", each)]
            workers.append(stack.enter_context(process(f"load worker {number}", command, piped=True)))
        for number, worker in enumerate(workers):
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise ChildFailed(f"load worker {number} did not connect its clients")
        start = time.monotonic() + warmup
        end = start + seconds
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"go {start} {end}\n")
            worker.stdin.flush()
        watched = dict(watch or {})
        watched.update({f"load{i}": [worker.pid] for i, worker in enumerate(workers)})
        time.sleep(max(0.0, start - time.monotonic()))
        at_start()
        before = {name: sum(map(cpu_seconds, pids)) for name, pids in watched.items()}
        time.sleep(max(0.0, end - time.monotonic()))
        after = {name: sum(map(cpu_seconds, pids)) for name, pids in watched.items()}
        at_end()
        results = []
        for number, worker in enumerate(workers):
            lines = worker.communicate(timeout=timeout)[0].strip().splitlines()
            if not lines:
                raise ChildFailed(f"load worker {number} printed no result (exit {worker.returncode})")
            results.append(json.loads(lines[-1]))
        failures = [result["failure"] for result in results if result["failure"]]
        if failures:
            raise ChildFailed(failures[0])
        times = sorted(t for result in results for t in result["times_us"])
        if not times:
            raise ChildFailed("no message came back in the measured window")
    count = sum(result["count"] for result in results)
    cpu = {name: (after[name] - before[name]) / seconds for name in watched}
    figures: dict[str, Any] = {
        "scenario": scenario, "clients": clients, "delivered": count, "round_trips": len(times),
        "delivered_per_s": count / seconds, "round_trips_per_s": len(times) / seconds,
        "p50_us": percentile(times, 0.5), "p99_us": percentile(times, 0.99),
        "load_cpu": sum(value for name, value in cpu.items() if name.startswith("load")),
    }
    for name in watch or {}:
        figures[f"{name}_cpu"] = cpu[name]
        figures[f"{name}_us_per_msg"] = cpu[name] * seconds / count * 1e6
    return figures


# -- the ceiling: a do-nothing server on the same frame code -----------------------------


class EchoServer(asyncio.BufferedProtocol):
    """The least a WebSocket server does per message: parse, unmask, answer in one write per read.

    Like the clients, it reads into one chunk (no 256 KiB ``bytes`` per read).
    """

    rooms: dict[str, set[EchoServer]] = {}  # noqa: RUF012  # one server per process: the rooms of all its sockets
    chunk = memoryview(bytearray(READ_SIZE))  # one server per process: every socket reads here, one at a time

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.room: str | None = None
        self.transport: asyncio.Transport | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wait for the handshake."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the process's chunk, whose bytes ``buffer_updated`` takes at once."""
        return self.chunk

    def buffer_updated(self, nbytes: int) -> None:
        """Answer the handshake, then each message."""
        assert self.transport is not None
        buffer = self.buffer
        buffer += self.chunk[:nbytes]
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._upgrade(bytes(buffer[:end]))
            del buffer[:end + 4]
        found, used = frames(buffer, masked=True)
        del buffer[:used]
        replies: list[bytes] = []
        send: Callable[[bytes], None] = replies.append
        for opcode, payload in found:
            if opcode == 0x8:
                self.transport.close()
                return
            if opcode not in (0x1, 0x2):
                continue
            if self.room is None:
                send(server_frame(payload))
            else:
                frame = server_frame(payload)
                for member in self.rooms[self.room]:
                    if member is self:
                        send(frame)
                    elif member.transport is not None:
                        member.transport.write(frame)
        if replies:
            self.transport.write(b"".join(replies))

    def _upgrade(self, head: bytes) -> None:
        assert self.transport is not None
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        self.transport.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        self.open = True
        room = parse_qs(urlsplit(lines[0].split(" ")[1]).query).get("room")
        if room:
            self.room = room[0]
            self.rooms.setdefault(self.room, set()).add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Leave the room."""
        if self.room is not None:
            self.rooms[self.room].discard(self)


async def serve(port: int) -> None:
    """Serve the ceiling on 127.0.0.1:``port`` until killed."""
    server = await asyncio.get_running_loop().create_server(EchoServer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    """``load``, ``worker`` (a process of ``load``) or ``serve``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["load", "worker", "serve"])
    parser.add_argument("--url", action="append", default=[],
                        help="a URL template (module docstring); again for several nodes"
                             " (default ws://127.0.0.1:8080/ws/bench)")
    parser.add_argument("--port", type=int, default=8080, help="serve: the port")
    parser.add_argument("--scenario", choices=SCENARIOS, default="echo")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--first", type=int, default=0, help="worker: the number of its first client")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--procs", type=int, default=2, help="load worker processes")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--size", type=int, default=100, help="message bytes")
    parser.add_argument("--window", type=int, default=32, help="flood: messages in flight per client")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to connect the clients")
    parser.add_argument("--watch", type=int, action="append", default=[], help="load: a pid whose CPU to report")
    args = parser.parse_args()
    args.url = args.url or ["ws://127.0.0.1:8080/ws/bench"]
    if args.command == "serve":
        asyncio.run(serve(args.port))
    elif args.command == "worker":
        asyncio.run(run_worker(args))
    else:
        watch = {f"pid{pid}": [pid] for pid in args.watch}
        print(json.dumps(load(args.url, args.scenario, args.clients, args.seconds, procs=args.procs,
                              rooms=args.rooms, size=args.size, window=args.window, watch=watch,
                              timeout=args.timeout)))


if __name__ == "__main__":
    main()

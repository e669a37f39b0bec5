"""Which WebSocket server should the embedded broker use: Twisted's own, Autobahn or websockets?

Run: python benchmarks/websocket_impl.py [--quick] [--rounds N]
     python benchmarks/websocket_impl.py --parse [--quick]
Needs the two other candidates, which are not dependencies of the project:
     pip install 'twisted[websocket]' autobahn

Each implementation serves, in a server process of its own, ``/echo`` (each
message goes back to its sender) and ``/bcast`` (each message goes to every
client of ``/bcast``) on 127.0.0.1, the two traffic shapes of the broker:
``twisted`` (``twisted.web.websocket``, on wsproto) and ``autobahn``
(``autobahn.twisted``) as resources of a twisted.web ``Site``; ``websockets``
as a plain Twisted ``Protocol`` on the TCP transport that drives the sans-I/O
``websockets.server.ServerProtocol`` (its 1 MiB message limit left on) and
joins each message's frames itself.
This process is the load generator: the ``websockets`` asyncio client, for all
three servers alike (it is now also a candidate's library, but it speaks the
same RFC 6455 bytes to every server, in its own process; when it is the
bottleneck, the server CPU columns still tell). Workloads: small-message echo
throughput over many clients, 64 KiB echo, broadcast fan-out, and sequential
round-trip latency. The table shows messages per second, websockets' rate
over each other's, and the server's CPU seconds per 10k messages.

``--parse`` times the parsers alone, without sockets: 100,000 pre-masked
text frames of 108 bytes (2 header bytes, the mask, 102 bytes of text) fed in
64 KiB reads, in microseconds per message (best of 5); then one text message
of 64 KiB, 256 KiB and 1 MiB sent as 1-byte fragments, in seconds (one run).
``websockets`` is ``ServerProtocol`` with our list-join assembly; ``wsproto``
is wsproto's ``Connection`` with twisted.web.websocket's own assembly
(``Buffer`` and ``maybeDeliver`` from ``twisted.web._websocket_impl``).
Autobahn has no sans-I/O layer (its frame parser is part of its Twisted
protocol), so it is not in that table.

Results and choice (2 cores shared with other work: another session's broker
tests ran beside these runs; CPython 3.11.7, Twisted 26.10.0 with wsproto
1.3.2, Autobahn 26.10.2 with its NVX C extension for masking and UTF-8 (it no
longer uses wsaccel, which is not installed), websockets 17.4 with its C
speedups; lowest and highest of four full runs, server CPU from 10 ms ticks):

    msg/s          twisted         autobahn        websockets
    echo 64 B      36,042-51,640   17,775-35,237   56,380-83,950
    echo 64 KiB    2,465-3,466     2,191-2,904     6,005-11,076
    fan-out 64 B   54,806-60,406   44,008-52,177   73,181-79,480
    round trip     4,717-7,751     6,373-6,819     7,377-11,526
    median rtt us  105-142         118-149         79-119

    CPU s/10k msg  twisted         autobahn        websockets
    echo 64 B      0.166-0.170     0.272-0.280     0.064-0.084
    echo 64 KiB    2.22-2.28       3.42-3.60       0.86-0.92
    fan-out 64 B   0.067-0.087     0.100-0.120     0.033-0.047
    round trip     0.70-0.85       0.75-0.95       0.40-0.60

    --parse        us per 108 B message   64 KiB / 256 KiB / 1 MiB as 1-byte fragments
    (three runs)
    websockets     2.87-3.05              0.20 / 0.78-0.86 / 3.23-3.50 s (linear)
    wsproto        10.67-10.79            0.69-0.76 / 3.43-3.64 / 29.3-33.4 s (quadratic: Buffer)

websockets' sans-I/O protocol moved more messages per second than both in
every workload of every run (1.1x to 4.3x Twisted's, 1.1x to 4.8x
Autobahn's) with less server CPU per message (1.3x to 2.7x less than
Twisted's, 1.6x to 4.3x less than Autobahn's); its median round trip was the
lowest in three runs of four. Its parser takes 3.5x to 3.8x less time per
small message than wsproto's, and it has no dependencies. The 1-byte
fragments show why reassembly must be linear: ``twisted.web.websocket``'s
``Buffer.add`` does ``self.data += new``, one copy of the whole message so
far per fragment (at its 0.7 s per 64 KiB, a linear 1 MiB would take about
11 s). So the broker drives ``ServerProtocol`` from a Twisted ``Protocol``
and adds what that layer leaves to its caller (Host check, origin patterns
with a same-origin default, handshake timeout, fragment count limit, linear
reassembly and UTF-8 validation, keep-alive pings and idle timeout, read
pausing, bounded and timed writes, rate limits);
BENCHMARKS.md compares the protections of the three.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame

IMPLEMENTATIONS = ("twisted", "autobahn", "websockets")


# -- server side (runs in the child process) -------------------------------


class _Hub:
    """The clients of /bcast, and what each implementation calls to send."""

    def __init__(self) -> None:
        self.members: list[Callable[[str | bytes], None]] = []

    def fan_out(self, message: str | bytes) -> None:
        for send in self.members:
            send(message)


def _twisted_resources(hub: _Hub) -> tuple[Any, Any]:
    from twisted.web.websocket import WebSocketResource

    class Peer:
        def __init__(self, broadcast: bool) -> None:
            self.broadcast = broadcast

        def negotiationStarted(self, transport: Any) -> None:
            self.transport = transport

        def negotiationFinished(self) -> None:
            if self.broadcast:
                hub.members.append(self.send)

        def send(self, message: str | bytes) -> None:
            if isinstance(message, str):
                self.transport.sendTextMessage(message)
            else:
                self.transport.sendBytesMessage(message)

        def textMessageReceived(self, message: str) -> None:
            hub.fan_out(message) if self.broadcast else self.send(message)

        bytesMessageReceived = textMessageReceived

        def pongReceived(self, payload: bytes) -> None:
            pass

        def connectionLost(self, reason: Any) -> None:
            if self.send in hub.members:
                hub.members.remove(self.send)

    class Factory:
        def __init__(self, broadcast: bool) -> None:
            self.broadcast = broadcast

        def buildProtocol(self, request: Any) -> Peer:
            return Peer(self.broadcast)

    return WebSocketResource(Factory(False)), WebSocketResource(Factory(True))


def _autobahn_resources(hub: _Hub) -> tuple[Any, Any]:
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    class Peer(WebSocketServerProtocol):
        broadcast = False

        def onOpen(self) -> None:
            if self.broadcast:
                hub.members.append(self.send)

        def send(self, message: str | bytes) -> None:
            if isinstance(message, str):
                self.sendMessage(message.encode(), isBinary=False)
            else:
                self.sendMessage(message, isBinary=True)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            message = payload if isBinary else payload.decode()
            hub.fan_out(message) if self.broadcast else self.send(message)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            if self.send in hub.members:
                hub.members.remove(self.send)

    class Broadcaster(Peer):
        broadcast = True

    resources = []
    for protocol in (Peer, Broadcaster):
        factory = WebSocketServerFactory()
        factory.protocol = protocol
        resources.append(WebSocketResource(factory))
    return resources[0], resources[1]


class _Assembler:
    """Joins the frames of one message: websockets' sans-I/O layer hands out frames.

    Chunks are kept in a list and joined once, at the last frame, so that a
    message in many fragments costs time linear in its size.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.text = False

    def add(self, frame: Frame) -> str | bytes | None:
        """The whole message once ``frame`` ends it (text decoded as UTF-8), else None."""
        if frame.opcode is not CONT:
            self.text = frame.opcode is TEXT
        self.chunks.append(frame.data)
        if not frame.fin:
            return None
        payload = b"".join(self.chunks)
        self.chunks.clear()
        return payload.decode() if self.text else payload


def _quiet_logger() -> logging.Logger:
    """A logger that drops everything, so websockets' per-connection INFO lines cost nothing."""
    logger = logging.getLogger("websocket_impl.quiet")
    logger.setLevel(logging.CRITICAL + 1)
    return logger


def _websockets_factory(hub: _Hub) -> Any:
    """A plain Twisted ``Protocol`` on the TCP transport, driving websockets' ``ServerProtocol``."""
    from twisted.internet.protocol import Factory, Protocol
    from websockets.http11 import Request
    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    logger = _quiet_logger()

    class Peer(Protocol):
        def __init__(self) -> None:
            self.ws = ServerProtocol(logger=logger)
            self.assembler = _Assembler()
            self.broadcast = False

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)  # as twisted.web and Autobahn do

        def dataReceived(self, data: bytes) -> None:
            ws = self.ws
            ws.receive_data(data)
            for event in ws.events_received():
                if isinstance(event, Request):
                    ws.send_response(ws.accept(event))
                    if ws.state is OPEN and event.path == "/bcast":
                        self.broadcast = True
                        hub.members.append(self.send)
                elif event.opcode in (TEXT, BINARY, CONT):
                    try:
                        message = self.assembler.add(event)
                    except UnicodeDecodeError as error:
                        ws.fail(CloseCode.INVALID_DATA, str(error))
                        break
                    if message is not None:
                        hub.fan_out(message) if self.broadcast else self.send(message)
            self.flush()

        def send(self, message: str | bytes) -> None:
            if self.ws.state is not OPEN:
                return
            if isinstance(message, str):
                self.ws.send_text(message.encode())
            else:
                self.ws.send_binary(message)
            self.flush()

        def flush(self) -> None:
            """Write what the protocol has to send; an empty bytes among it means close."""
            writes = self.ws.data_to_send()
            self.transport.write(b"".join(writes))
            if b"" in writes:
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self.send in hub.members:
                hub.members.remove(self.send)

    return Factory.forProtocol(Peer)


def _site(echo: Any, broadcast: Any) -> Any:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"echo", echo)
    root.putChild(b"bcast", broadcast)
    site = Site(root)
    site.log = lambda request: None
    return site


def serve(implementation: str) -> None:
    """Serve /echo and /bcast on a free port; print the port; run until stdin closes."""
    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol

    hub = _Hub()
    if implementation == "websockets":
        factory = _websockets_factory(hub)
    else:
        make = _twisted_resources if implementation == "twisted" else _autobahn_resources
        factory = _site(*make(hub))

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    stdio.StandardIO(StopOnEOF())
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()


# -- load side (this process) ----------------------------------------------


@dataclass
class Sizes:
    """How much work each workload does."""

    clients: int
    echo_messages: int
    big_messages: int
    fan_out_messages: int
    round_trips: int


QUICK = Sizes(clients=10, echo_messages=100, big_messages=10, fan_out_messages=30, round_trips=200)
FULL = Sizes(clients=50, echo_messages=1000, big_messages=100, fan_out_messages=300, round_trips=2000)


def _connect(port: int, path: str) -> Any:
    from websockets.asyncio.client import connect

    return connect(f"ws://127.0.0.1:{port}{path}", compression=None, max_size=None,
                   open_timeout=10, ping_interval=None)


async def _echo(port: int, clients: int, count: int, payload: str) -> int:
    """Every client sends ``count`` messages and reads them back; returns messages echoed."""
    async def one() -> None:
        async with _connect(port, "/echo") as ws:
            async def reader() -> None:
                for _ in range(count):
                    await ws.recv()
            reading = asyncio.ensure_future(reader())
            for _ in range(count):
                await ws.send(payload)
            await reading
    await asyncio.gather(*(one() for _ in range(clients)))
    return clients * count


async def _fan_out(port: int, clients: int, count: int) -> int:
    """One sender, ``count`` messages, each delivered to ``clients`` receivers."""
    receivers = [await _connect(port, "/bcast") for _ in range(clients)]
    try:
        async with _connect(port, "/bcast") as sender:
            await asyncio.sleep(0.05)  # let the server register every receiver
            async def drain(ws: Any) -> None:
                for _ in range(count):
                    await ws.recv()
            draining = [asyncio.ensure_future(drain(ws)) for ws in receivers + [sender]]
            for index in range(count):
                await sender.send(f"news {index}")
            await asyncio.gather(*draining)
    finally:
        for ws in receivers:
            await ws.close()
    return clients * count


async def _latency(port: int, count: int) -> list[float]:
    """Seconds per sequential round trip of a small message."""
    times = []
    async with _connect(port, "/echo") as ws:
        for _ in range(count):
            start = time.perf_counter()
            await ws.send("ping")
            await ws.recv()
            times.append(time.perf_counter() - start)
    return times


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc), or NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


@dataclass
class Result:
    rate: float  # messages per second (for latency: round trips per second)
    cpu_per_10k: float  # server CPU seconds per 10k messages
    median_us: float = float("nan")


def _measure(implementation: str, sizes: Sizes, rounds: int) -> dict[str, Result]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", implementation],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the {implementation} server did not start")
        port = int(line)
        workloads: dict[str, Callable[[], Any]] = {
            "echo 64 B": lambda: _echo(port, sizes.clients, sizes.echo_messages, "x" * 64),
            "echo 64 KiB": lambda: _echo(port, sizes.clients, sizes.big_messages, "x" * 65536),
            "fan-out 64 B": lambda: _fan_out(port, sizes.clients, sizes.fan_out_messages),
            "round trip": lambda: _latency(port, sizes.round_trips),
        }
        results = {}
        for name, workload in workloads.items():
            best: Result | None = None
            for _ in range(rounds):
                cpu = _cpu_seconds(server.pid)
                start = time.perf_counter()
                outcome = asyncio.run(workload())
                elapsed = time.perf_counter() - start
                cpu = _cpu_seconds(server.pid) - cpu
                if isinstance(outcome, list):
                    result = Result(len(outcome) / elapsed, cpu / len(outcome) * 1e4,
                                    statistics.median(outcome) * 1e6)
                else:
                    result = Result(outcome / elapsed, cpu / outcome * 1e4)
                if best is None or result.rate > best.rate:
                    best = result
            results[name] = best
        return results
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def _table(results: dict[str, dict[str, Result]]) -> str:
    tw, ab, ws = results["twisted"], results["autobahn"], results["websockets"]
    rows = [f"{'workload':<14}{'twisted msg/s':>15}{'autobahn msg/s':>16}{'websockets msg/s':>18}"
            f"{'ws/tw':>7}{'ws/ab':>7}{'tw cpu s/10k':>14}{'ab cpu s/10k':>14}{'ws cpu s/10k':>14}"]
    for name in tw:
        rows.append(f"{name:<14}{tw[name].rate:>15,.0f}{ab[name].rate:>16,.0f}{ws[name].rate:>18,.0f}"
                    f"{ws[name].rate / tw[name].rate:>7.2f}{ws[name].rate / ab[name].rate:>7.2f}"
                    f"{tw[name].cpu_per_10k:>14.3f}{ab[name].cpu_per_10k:>14.3f}"
                    f"{ws[name].cpu_per_10k:>14.3f}")
    name = "round trip"
    rows.append(f"{'median rtt us':<14}{tw[name].median_us:>15,.0f}{ab[name].median_us:>16,.0f}"
                f"{ws[name].median_us:>18,.0f}{tw[name].median_us / ws[name].median_us:>7.2f}"
                f"{ab[name].median_us / ws[name].median_us:>7.2f}")
    return "\n".join(rows)


# -- parsers alone, no sockets (--parse) -------------------------------------


_MASK = b"\x37\xfa\x21\x3d"


def _client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client's frame (masked, as clients must), with a payload under 126 bytes."""
    masked = bytes(byte ^ _MASK[index % 4] for index, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + _MASK + masked


def _small_messages(count: int) -> bytes:
    """``count`` text frames of 108 bytes: 2 header bytes, the mask, 102 bytes of text."""
    return _client_frame(1, b"m" * 102) * count


def _one_byte_fragments(size: int) -> bytes:
    """One text message of ``size`` bytes sent as ``size`` frames of 1 byte."""
    middle = _client_frame(0, b"x", fin=False)
    return _client_frame(1, b"x", fin=False) + middle * (size - 2) + _client_frame(0, b"x")


def _chunks(stream: bytes, size: int = 65536) -> list[bytes]:
    """The stream as the socket would hand it over: reads of up to 64 KiB."""
    return [stream[start:start + size] for start in range(0, len(stream), size)]


def _parse_websockets(chunks: list[bytes]) -> list[str | bytes]:
    """websockets' ``ServerProtocol`` (after the handshake) with our list-join assembly."""
    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    ws = ServerProtocol(state=OPEN, logger=_quiet_logger())
    assembler = _Assembler()
    messages: list[str | bytes] = []
    for chunk in chunks:
        ws.receive_data(chunk)
        for frame in ws.events_received():
            message = assembler.add(frame)
            if message is not None:
                messages.append(message)
    return messages


def _parse_wsproto(chunks: list[bytes]) -> list[str | bytes]:
    """wsproto's ``Connection`` (after the handshake) with twisted.web.websocket's own assembly."""
    from twisted.web._websocket_impl import Buffer, maybeDeliver
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    connection = Connection(ConnectionType.SERVER)
    text: Buffer[str] = Buffer("")
    messages: list[str | bytes] = []
    for chunk in chunks:
        connection.receive_data(chunk)
        for event in connection.events():
            if isinstance(event, TextMessage):
                maybeDeliver(event, text, messages.append)
    return messages


PARSERS: dict[str, Callable[[list[bytes]], list[str | bytes]]] = {
    "websockets": _parse_websockets,
    "wsproto": _parse_wsproto,
}


def _timed(parse: Callable[[list[bytes]], list[str | bytes]], chunks: list[bytes],
           count: int, length: int, repeats: int) -> float:
    """Best wall time of ``repeats`` runs, in seconds; checks ``count`` messages of ``length`` came out."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        messages = parse(chunks)
        best = min(best, time.perf_counter() - start)
        if len(messages) != count or any(len(message) != length for message in messages):
            raise SystemExit(f"{parse.__name__} did not deliver {count} messages of {length} bytes")
    return best


def parse_benchmark(quick: bool) -> str:
    """Microseconds per small message, and seconds for a big message in 1-byte fragments."""
    count = 10_000 if quick else 100_000
    sizes = (16384, 65536) if quick else (65536, 262144, 1048576)
    small = _chunks(_small_messages(count))
    rows = [f"{'parser':<12}{f'us/msg, {count:,} x 108 B':>26}"
            + "".join(f"{f's, {size // 1024} KiB in 1 B frames':>28}" for size in sizes)]
    for name, parse in PARSERS.items():
        row = f"{name:<12}{_timed(parse, small, count, 102, 5) / count * 1e6:>26.2f}"
        for size in sizes:
            row += f"{_timed(parse, _chunks(_one_byte_fragments(size)), 1, size, 1):>28.2f}"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per workload, best kept")
    parser.add_argument("--parse", action="store_true", help="time the sans-I/O parsers alone")
    parser.add_argument("--serve", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.parse:
        print(parse_benchmark(args.quick))
        return 0
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    results = {name: _measure(name, sizes, rounds) for name in IMPLEMENTATIONS}
    print(f"{sizes.clients} clients, best of {rounds}; ws/tw and ws/ab = websockets' rate over"
          f" twisted's and autobahn's (above 1: websockets better; for rtt, the inverse)")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

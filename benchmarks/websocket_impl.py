"""Which WebSocket server should the embedded broker use: Twisted's own or Autobahn?

Run: python benchmarks/websocket_impl.py [--quick] [--rounds N]

Each implementation serves, in a server process of its own, a twisted.web
``Site`` with two WebSocket resources on 127.0.0.1: ``/echo`` (each message
goes back to its sender) and ``/bcast`` (each message goes to every client of
``/bcast``), the two traffic shapes of the broker. This process is the load
generator (the ``websockets`` asyncio client, a third library, so that
neither side is measured against itself). Workloads: small-message echo
throughput over many clients, 64 KiB echo, broadcast fan-out, and sequential
round-trip latency. The table shows messages per second, the server's CPU
seconds per 10k messages, and the ratio twisted/autobahn (above 1: Twisted's
is better).

Result and choice (2 cores shared with other work, CPython 3.11, Twisted
26.10, Autobahn 26.10; two full runs, ratio twisted/autobahn):

    workload       run 1   run 2   server CPU per message, twisted vs autobahn
    echo 64 B       1.34    1.33   0.23 vs 0.32-0.37 s/10k
    echo 64 KiB     1.22    1.18   2.6-2.7 vs 3.2-3.4 s/10k
    fan-out 64 B    1.06    1.53   0.073 vs 0.087-0.127 s/10k
    round trip      1.10    2.29   (median 132-183 us vs 146-224 us)

Twisted's ``twisted.web.websocket`` is ahead on every workload and uses
less server CPU per message, and it has fewer dependencies (wsproto and h11,
where Autobahn adds txaio, cryptography, cffi, cbor2, msgpack, ujson), so
the broker uses it (``twisted[websocket]`` in install_requires). What it
lacks (a deferred handshake decision, a message size limit, a safe close
of a paused socket) ``pystrands.broker.websocket`` adds on public APIs;
see that module's docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

IMPLEMENTATIONS = ("twisted", "autobahn")


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


def serve(implementation: str) -> None:
    """Serve /echo and /bcast on a free port; print the port; run until stdin closes."""
    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    hub = _Hub()
    make = _twisted_resources if implementation == "twisted" else _autobahn_resources
    echo, broadcast = make(hub)
    root = Resource()
    root.putChild(b"echo", echo)
    root.putChild(b"bcast", broadcast)

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    stdio.StandardIO(StopOnEOF())
    site = Site(root)
    site.log = lambda request: None
    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site).addCallback(listening)
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
    tw, ab = results["twisted"], results["autobahn"]
    rows = [f"{'workload':<14}{'twisted msg/s':>15}{'autobahn msg/s':>16}{'ratio':>7}"
            f"{'tw cpu s/10k':>14}{'ab cpu s/10k':>14}"]
    for name in tw:
        rows.append(f"{name:<14}{tw[name].rate:>15,.0f}{ab[name].rate:>16,.0f}"
                    f"{tw[name].rate / ab[name].rate:>7.2f}"
                    f"{tw[name].cpu_per_10k:>14.3f}{ab[name].cpu_per_10k:>14.3f}")
    name = "round trip"
    rows.append(f"{'median rtt us':<14}{tw[name].median_us:>15,.0f}{ab[name].median_us:>16,.0f}"
                f"{ab[name].median_us / tw[name].median_us:>7.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="runs per workload, best kept")
    parser.add_argument("--serve", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    results = {name: _measure(name, sizes, rounds) for name in IMPLEMENTATIONS}
    print(f"{sizes.clients} clients, best of {rounds}; ratio = twisted / autobahn (higher: twisted better)")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

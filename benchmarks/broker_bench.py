"""The embedded broker end to end, loaded by ``wsload.py``, beside the harness's own ceiling (issue 16).

``run.py broker`` calls :func:`bench_broker`. Each round starts, for each
server, fresh processes: the embedded broker (``python -m pystrands server``,
what a user runs) with the Twisted-native backend of ``backends.py`` (echo;
for the room scenario the room backend below), and ``wsload.py serve`` (the
ceiling: a do-nothing WebSocket server on the load generator's frame code).
The same load, from ``wsload.py``'s worker processes, goes to both; rounds
are interleaved. Broker CPU per delivered message is its process's user +
system time over the measured window (``/proc``, 10 ms ticks) divided by the
messages the clients received in that window.

Also runnable alone for profiling (``profile`` command): the broker in this
process under cProfile, switched on only for the measured window (so the
handshakes are left out), then a per-function table.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wsload
from processes import REPO, free_port, process, wait_listening

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Scenario:
    """One load: its table label, wsload's scenario, and the number of clients."""

    label: str
    kind: str
    clients: int

    @property
    def backend(self) -> str:
        """The backend kind behind the broker for this load."""
        return "room" if self.kind == "room" else "twisted"


FULL_SCENARIOS = [Scenario("echo, 10 clients", "echo", 10), Scenario("echo, 100 clients", "echo", 100),
                  Scenario("echo, 1,000 clients", "echo", 1000),
                  Scenario("room, 100 clients in 10 rooms", "room", 100),
                  Scenario("flood, 100 clients x 32 in flight", "flood", 100)]
QUICK_SCENARIOS = [Scenario("echo, 10 clients", "echo", 10), Scenario("room, 20 clients in 10 rooms", "room", 20),
                   Scenario("flood, 10 clients x 32 in flight", "flood", 10)]
SERVERS = ("broker", "ceiling")


def wait_ready(port: int, timeout: float = 20.0) -> None:
    """Return once the broker on ``port`` has a backend (its ``/readyz`` answers 200)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:  # refused, or 503 (an HTTPError) while no backend is connected
            time.sleep(0.05)
    raise RuntimeError(f"no backend connected to the broker on port {port} after {timeout}s")


def backend_command(kind: str, port: int) -> list[str]:
    """The Twisted-native echo backend of backends.py, or the room backend below."""
    if kind == "room":
        return [sys.executable, __file__, "room-backend", "--port", str(port)]
    return [sys.executable, str(BENCH / "backends.py"), kind, "--port", str(port)]


def url(ws_port: int, kind: str) -> str:
    """The URL template (wsload.py) of ``kind``'s clients; in the room scenario each names its room in the query."""
    return f"ws://127.0.0.1:{ws_port}/ws/bench" + ("?room=r{room}" if kind == "room" else "")


@contextmanager
def server(name: str, backend: str, path: Path = REPO) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """The server under test listening: its WebSocket port, and the pids whose CPU to read.

    The broker's ``pystrands`` comes from ``path`` (another checkout, to compare); the backend's from this one.
    """
    ws_port = free_port()
    if name == "ceiling":
        command = [sys.executable, str(BENCH / "wsload.py"), "serve", "--port", str(ws_port)]
        with process("ceiling (wsload.py serve)", command) as proc:
            wait_listening(ws_port)
            yield ws_port, {"server": [proc.pid]}
        return
    tcp_port = free_port()
    command = [sys.executable, "-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port)]
    with process("embedded broker", command, path) as proc:
        wait_listening(ws_port)
        with process(f"{backend} backend", backend_command(backend, tcp_port)) as back:
            wait_ready(ws_port)
            yield ws_port, {"server": [proc.pid], "backend": [back.pid]}


def measure(name: str, scenarios: list[Scenario], seconds: float, path: Path = REPO) -> dict[str, dict[str, float]]:
    """Each scenario against a fresh ``name`` server (one per backend kind): label -> figures."""
    results: dict[str, dict[str, float]] = {}
    for backend in sorted({scenario.backend for scenario in scenarios}):
        with server(name, backend, path) as (ws_port, pids):
            for scenario in scenarios:
                if scenario.backend == backend:
                    results[scenario.label] = wsload.load(url(ws_port, scenario.kind), scenario.kind,
                                                          scenario.clients, seconds, watch=pids)
    return results


def summary(values: list[float]) -> tuple[float, float]:
    """(median, spread): spread is (max - min) / median."""
    middle = statistics.median(values)
    return middle, (max(values) - min(values)) / middle if middle else 0.0


def cell(values: list[float], fmt: str = "{:,.0f}") -> str:
    """A median with ± half the spread of the rounds."""
    if not values:
        return "-"
    middle, spread = summary(values)
    return fmt.format(middle) + (f" ±{spread * 50:.0f}%" if spread and len(values) > 1 else "")


def bench_broker(quick: bool, rounds: int, progress: Any = None) -> dict[str, Any]:
    """Run every scenario against the broker and the ceiling, ``rounds`` times interleaved; print the table."""
    scenarios = QUICK_SCENARIOS if quick else FULL_SCENARIOS
    seconds = 0.5 if quick else 3.0
    print(f"\n== broker: wsload.py ({os.cpu_count()} cores; 2 load processes, raw frames) -> embedded broker"
          f" -> Twisted-native backend, beside the ceiling (wsload.py serve); 100 B messages, {seconds:g} s"
          f" per scenario; {rounds} round(s)")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {s.label: [] for s in scenarios} for name in SERVERS}
    for number in range(rounds):
        for name in SERVERS:
            if progress is not None:
                progress(f"broker, round {number + 1} of {rounds}: {name}")
            for label, figures in measure(name, scenarios, seconds).items():
                runs[name][label].append(figures)

    def column(name: str, label: str, key: str) -> list[float]:
        return [run[key] for run in runs[name][label]]

    headers = ["scenario", "msgs/s", "p50 us", "p99 us", "broker CPU", "us/msg", "backend CPU", "load CPU",
               "ceiling msgs/s", "ceiling us/msg", "load CPU", "x ceiling"]
    rows = []
    for scenario in scenarios:
        label = scenario.label
        ratios = [b["delivered_per_s"] / c["delivered_per_s"]
                  for b, c in zip(runs["broker"][label], runs["ceiling"][label], strict=True)]
        rows.append([label, cell(column("broker", label, "delivered_per_s")), cell(column("broker", label, "p50_us")),
                     cell(column("broker", label, "p99_us")),
                     cell(column("broker", label, "server_cpu"), "{:.0%}"),
                     cell(column("broker", label, "server_us_per_msg"), "{:.1f}"),
                     cell(column("broker", label, "backend_cpu"), "{:.0%}"),
                     cell(column("broker", label, "load_cpu"), "{:.0%}"),
                     cell(column("ceiling", label, "delivered_per_s")),
                     cell(column("ceiling", label, "server_us_per_msg"), "{:.1f}"),
                     cell(column("ceiling", label, "load_cpu"), "{:.0%}"),
                     cell(ratios, "{:.2f}x")])
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    print("\ndelivered msgs/s, round trip us, CPU in % of one core over the window (load: its 2 processes),"
          " us/msg: server CPU per delivered message; median ±half the spread of the rounds")
    for row in [headers, *rows]:
        print("  ".join([str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                                            strict=True)]))
    panels = [{"title": "Broker end to end vs the harness ceiling (delivered msgs/s)",
               "groups": [s.label for s in scenarios],
               "series": {name: [summary(column(name, s.label, "delivered_per_s"))[0] for s in scenarios]
                          for name in SERVERS}},
              {"title": "Server CPU per delivered message (us)",
               "groups": [s.label for s in scenarios],
               "series": {name: [summary(column(name, s.label, "server_us_per_msg"))[0] for s in scenarios]
                          for name in SERVERS}}]
    return {"results": runs, "targets": [], "panels": panels}


# -- the room backend and the profiled broker -----------------------------------------


def run_room_backend(port: int) -> None:
    """Twisted-native: each client joins the room its URL names (``?room=``); a message goes to its room."""
    from twisted.internet import reactor

    from pystrands import Backend, BackendService

    class Rooms(Backend):
        def on_connection_request(self, request: Any) -> bool:
            request.context.room_id = request.query["room"][0]
            return True

        def on_message(self, message: str, context: Any) -> object:
            return self.broker.send_room_message(context.room_id, message)

    BackendService(Rooms(), f"tcp:host=127.0.0.1:port={port}", reactor=reactor).startService()
    reactor.run()  # type: ignore[attr-defined]


def run_profiled_broker(ws_port: int, tcp_port: int, out: Path) -> None:
    """The broker in this process; SIGUSR1 starts cProfile, SIGUSR2 stops it, writes ``out`` and exits."""
    from twisted.internet import reactor

    from pystrands.broker.config import BrokerConfig
    from pystrands.broker.service import BrokerService, fit_file_limit

    config = BrokerConfig(ws_port=ws_port, tcp_port=tcp_port)
    fit_file_limit(config)
    profiler = cProfile.Profile()

    def stop(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    signal.signal(signal.SIGUSR2, stop)
    BrokerService(config, reactor=reactor).startService()
    reactor.run()  # type: ignore[attr-defined]


def profile(kind: str, clients: int, seconds: float, out: Path, top: int, path: Path = REPO) -> None:
    """Profile the broker (``pystrands`` from ``path``) over the measured window of one scenario;
    print the top functions by own time, then the time per message by stage."""
    ws_port, tcp_port = free_port(), free_port()
    command = [sys.executable, __file__, "profiled-broker", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port),
               "--out", str(out)]
    backend = "room" if kind == "room" else "twisted"
    with process("profiled broker", command, path) as broker:
        wait_listening(ws_port)
        with process(f"{backend} backend", backend_command(backend, tcp_port)):
            wait_ready(ws_port)
            figures = wsload.load(url(ws_port, kind), kind, clients, seconds, watch={"server": [broker.pid]},
                                  at_start=lambda: os.kill(broker.pid, signal.SIGUSR1),
                                  at_end=lambda: os.kill(broker.pid, signal.SIGUSR2))
            broker.wait(30)
    delivered = figures["delivered"]
    print(f"{delivered:,} messages delivered in the window ({figures['delivered_per_s']:,.0f}/s under the"
          f" profiler); broker {figures['server_us_per_msg']:.1f} us CPU per message")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(top)
    parts = breakdown(stats)
    total = sum(parts.values())
    print(f"per delivered message, profiled time ({total / delivered * 1e6:.1f} us in all; cProfile inflates"
          " call-heavy parts)")
    for name, seconds in parts.items():
        print(f"  {name:66} {seconds / delivered * 1e6:6.1f} us  {seconds / total:5.1%}")


#: (file ending, function) -> its cumulative time, for the breakdown.
_FUNCTIONS = {
    "parse": ("websockets/protocol.py", "receive_data"),
    "simple": ("broker/websocket.py", "simple_messages"),
    "ws_read": ("broker/websocket.py", "dataReceived"),
    "assemble": ("broker/guards.py", "add"),
    "client_message": ("broker/router.py", "client_message"),
    "encode": ("pystrands/wire.py", "encode_frame"),
    "encode_event": ("pystrands/wire.py", "new_message_frame"),
    "backend_send": ("broker/backends.py", "send"),
    "backend_read": ("broker/backends.py", "dataReceived"),
    "backend_frame": ("broker/router.py", "backend_frame"),
    "send_text": ("broker/websocket.py", "send_text"),
    "do_write": ("twisted/internet/abstract.py", "doWrite"),
    "gathered": ("broker/outbox.py", "send_gathered"),
    "do_read": ("twisted/internet/tcp.py", "doRead"),
}


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Profiled seconds per stage of a message's trip through the broker, from cumulative times."""
    found = dict.fromkeys(_FUNCTIONS, 0.0)
    total = stats.total_tt  # type: ignore[attr-defined]  # untyped in typeshed
    for (path, _, function), row in stats.stats.items():  # type: ignore[attr-defined]  # untyped in typeshed
        for key, (ending, name) in _FUNCTIONS.items():
            if function == name and path.endswith(ending):
                found[key] += row[3]
    parse = found["parse"] + found["simple"]
    encode = found["encode"] + found["encode_event"]
    ws_dispatch = found["ws_read"] - parse - found["client_message"] - found["assemble"]
    parts = {
        "WebSocket frame parse, unmask, UTF-8 (simple_messages, websockets)": parse,
        "message assembly of fragments (websockets' path only)": found["assemble"],
        "routing a client message (router, minus encode and write)":
            found["client_message"] - encode - found["backend_send"],
        "JSON encode of the event (wire.new_message_frame, encode_frame)": encode,
        "backend write (outbox, transport.write)": found["backend_send"],
        "backend reply parse (line split, JSON decode, checks)": found["backend_read"] - found["backend_frame"],
        "routing a backend reply (router, minus the client write)": found["backend_frame"] - found["send_text"],
        "frame write back (frame encode, outbox, transport.write)": found["send_text"],
        "WebSocket read glue (timestamps, slices, events, flush)": ws_dispatch,
        "socket writes at the end of a turn (send(2) and its Python)": found["gathered"] + found["do_write"],
        "socket reads (recv(2) and its Python)": found["do_read"] - found["ws_read"] - found["backend_read"],
    }
    parts["the rest: reactor (epoll_wait, dispatch, log context), timers"] = total - sum(parts.values())
    return parts


def compare(against: Path, rounds: int, quick: bool) -> None:
    """This checkout's broker against the one in ``against`` (its ``pystrands/``), rounds interleaved, order alternated.

    Prints broker CPU us per delivered message and msgs/s for each, and the
    per-round ratio of CPU per message (this / that): the figure that decides
    whether a change is kept.
    """
    scenarios = QUICK_SCENARIOS if quick else FULL_SCENARIOS
    seconds = 0.5 if quick else 3.0
    paths = {"this": REPO, "that": against}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {s.label: [] for s in scenarios} for name in paths}
    for number in range(rounds):
        for name in (("this", "that") if number % 2 == 0 else ("that", "this")):
            for label, figures in measure("broker", scenarios, seconds, paths[name]).items():
                runs[name][label].append(figures)
    print(f"broker CPU us per delivered message (msgs/s), this = {REPO}, that = {against};"
          f" {rounds} rounds, median ±half the spread")
    for scenario in scenarios:
        this, that = runs["this"][scenario.label], runs["that"][scenario.label]
        ratio = [a["server_us_per_msg"] / b["server_us_per_msg"] for a, b in zip(this, that, strict=True)]
        print(f"  {scenario.label:36} this {cell([r['server_us_per_msg'] for r in this], '{:.1f}'):>11}"
              f" ({cell([r['delivered_per_s'] for r in this]):>13})  that"
              f" {cell([r['server_us_per_msg'] for r in that], '{:.1f}'):>11}"
              f" ({cell([r['delivered_per_s'] for r in that]):>13})  this/that {cell(ratio, '{:.2f}')}")


def main() -> None:
    """``room-backend``, ``profiled-broker`` (processes of the benchmark), ``profile`` or ``compare``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["room-backend", "profiled-broker", "profile", "compare"])
    parser.add_argument("--against", type=Path,
                        help="compare: a directory holding another pystrands/; profile: profile that one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="room-backend: the broker's backend port")
    parser.add_argument("--ws-port", type=int, default=0)
    parser.add_argument("--tcp-port", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "broker.prof")
    parser.add_argument("--scenario", choices=wsload.SCENARIOS, default="echo")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.command == "room-backend":
        run_room_backend(args.port)
    elif args.command == "profiled-broker":
        run_profiled_broker(args.ws_port, args.tcp_port, args.out)
    elif args.command == "compare":
        if args.against is None or not (args.against / "pystrands").is_dir():
            parser.error("compare needs --against DIR, a directory holding a pystrands/ package")
        compare(args.against, args.rounds, args.quick)
    else:
        profile(args.scenario, args.clients, args.seconds, args.out, args.top, args.against or REPO)


if __name__ == "__main__":
    main()

"""Our embedded broker against the reference Go broker, same machine, same run (issue 16).

    python benchmarks/go_compare.py --go-bin DIR [--rounds 3] [--seconds 5] [--quick]
    PYSTRANDS_GO_BIN=DIR python benchmarks/run.py go

``DIR`` (or ``PYSTRANDS_GO_BIN``) holds the reference Go broker's binaries,
built outside this repository: ``pystrand-broker``, ``loadtest`` and
``echo-backend``. Two loads, each against both brokers, every run on fresh
processes, rounds interleaved with the order reversed every other round:

* **the issue's own measurement**: the Go load tester, ``loadtest -mode
  sequential -clients 50`` (each client sends, waits for its echo up to
  500 ms, repeats), with our Twisted-native echo backend (``backends.py
  twisted``) and with the Go echo backend (``echo-backend``, 10 connections)
  behind each broker. Its msgs/s, p50 and p99 are read from its output
  (:func:`parse_loadtest`; the percentiles have 0.1 ms steps). Its ``blast``
  mode is not used: it measures nothing (a read timeout fails a gorilla
  connection for good);
* **this project's harness**: ``wsload.py echo`` with 50 clients and ``room``
  with 100 clients in 10 rooms, with the Twisted-native backends of
  ``backends.py`` (``twisted``; ``rooms``, which takes the room from the URL's
  path: the Go broker does not forward a query string to the backend).

CPU (user + system, ``/proc``) of the broker, the backend and the load
generator over the load tester's whole run (wall clock), or wsload's measured
window, in cores: the Go broker runs on every core, ours on one. The Go
broker logs several lines per message: its output goes to /dev/null.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wsload
from processes import ChildFailed, cpu_seconds, free_port, process, wait_listening
from run import BENCH, cell, over, print_spread, print_table, round_ratios, save_outcome, summary, verdict

BINARIES = ("pystrand-broker", "loadtest", "echo-backend")
#: Where a reader learns to build them.
HOW_TO_BUILD = ("build them as BENCHMARKS.md says (section 5, \"Against the reference Go broker\"), then set"
                " PYSTRANDS_GO_BIN=DIR (or go_compare.py --go-bin DIR)")
GO, OURS = "Go", "ours"
BROKERS = (GO, OURS)
#: Connections the Go echo backend opens (its default).
GO_BACKEND_CONNECTIONS = 10


class NoGoBroker(ValueError):
    """The Go binaries' directory is not given, or lacks one of them."""


def go_binaries(directory: str | Path | None) -> Path:
    """``directory`` if it holds every one of :data:`BINARIES` as an executable, else :class:`NoGoBroker`."""
    if not directory:
        raise NoGoBroker(f"PYSTRANDS_GO_BIN is not set (the reference Go broker's binaries): {HOW_TO_BUILD}")
    path = Path(directory)
    for name in BINARIES:
        if not os.access(path / name, os.X_OK) or not (path / name).is_file():
            raise NoGoBroker(f"{path} has no executable {name}: {HOW_TO_BUILD}")
    return path


@dataclass(frozen=True)
class Params:
    """One run: where the Go binaries are, rounds, seconds of load per measurement (whole: the Go tester's unit)."""

    go_bin: Path
    rounds: int = 3
    seconds: int = 5
    timeout: float = 30.0


@dataclass(frozen=True)
class Load:
    """A load: its label, its generator (the Go ``loadtest`` or a wsload.py scenario), backend and clients."""

    label: str
    tool: str
    backend: str
    clients: int


LOADS = [Load("Go loadtest echo, 50 clients, Twisted backend", "loadtest", "twisted", 50),
         Load("Go loadtest echo, 50 clients, Go backend", "loadtest", "go", 50),
         Load("wsload echo, 50 clients, Twisted backend", "echo", "twisted", 50),
         Load("wsload room, 100 clients in 10 rooms", "room", "rooms", 100)]
#: wsload.py's URL template per scenario (the room in the path, where backends.py rooms reads it).
PATHS = {"echo": "/ws/bench/{client}", "room": "/ws/room/{room}/{client}"}


# -- the Go load tester's output ---------------------------------------------------------------------------

_RESULTS = re.compile(r"RESULTS: (\d+) clients, (\S+) mode, (\d+)s")
_FIELDS = {
    "sent": re.compile(r"Sent:\s+(\d+)"),
    "received": re.compile(r"Received:\s+(\d+)"),
    "errors": re.compile(r"Errors:\s+(\d+)"),
    "loss_percent": re.compile(r"Loss:\s+([\d.]+)%"),
}
_LATENCY = re.compile(r"Latency:\s+p50=([\d.]+)ms\s+p95=([\d.]+)ms\s+p99=([\d.]+)ms")


def parse_loadtest(output: str) -> dict[str, float]:
    """The figures of the Go load tester's results block: counts, received per second, round trips in us.

    ``msgs_per_s`` is received / the nominal duration, as the tester's own rate
    (unrounded). A ValueError names what is missing when there is no complete
    results block (the tester was cut short, or this is not its output).
    """
    head = _RESULTS.search(output)
    if head is None:
        raise ValueError("no 'RESULTS: N clients, MODE mode, Ns' line in the load tester's output")
    figures: dict[str, float] = {"clients": int(head[1]), "seconds": int(head[3])}
    for name, pattern in _FIELDS.items():
        found = pattern.search(output, head.end())
        if found is None:
            raise ValueError(f"no {name} figure in the load tester's results")
        figures[name] = float(found[1])
    latency = _LATENCY.search(output, head.end())
    if latency is None:
        raise ValueError("no 'Latency: p50=... p95=... p99=...' line in the load tester's results")
    figures.update(p50_us=float(latency[1]) * 1000, p95_us=float(latency[2]) * 1000,
                   p99_us=float(latency[3]) * 1000)
    figures["msgs_per_s"] = figures["received"] / figures["seconds"] if figures["seconds"] else 0.0
    return figures


# -- the set-ups --------------------------------------------------------------------------------------------


def wait_upgrading(port: int, path: str, timeout: float) -> None:
    """Return once a WebSocket handshake for ``path`` on 127.0.0.1:``port`` is answered 101.

    The Go broker has no readiness URL; it answers a handshake with an empty
    200 while no backend is connected, and upgrades once one accepts.
    """
    request = wsload.handshake_request(path, f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    answer = b""
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.sendall(request)
            answer = probe.recv(4096).split(b"\r\n", 1)[0]
            if answer.startswith(b"HTTP/1.1 101"):
                return
        time.sleep(0.1)
    raise TimeoutError(f"no WebSocket handshake on port {port} was upgraded within {timeout:g}s"
                       f" (last answer: {answer.decode(errors='replace') or 'none'})")


def backend_command(kind: str, port: int, go_bin: Path) -> list[str]:
    """The Go echo backend, or a Twisted-native backend of backends.py, connecting to 127.0.0.1:``port``."""
    if kind == "go":
        return [str(go_bin / "echo-backend"), f"127.0.0.1:{port}", str(GO_BACKEND_CONNECTIONS)]
    return [sys.executable, str(BENCH / "backends.py"), kind, "--port", str(port)]


@contextmanager
def setup(broker: str, backend: str, params: Params) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """``broker`` (GO or OURS) and ``backend`` started, a handshake upgraded: its WebSocket port and pids."""
    ws_port, tcp_port = free_port(), free_port()
    ports = ["--ws-port", str(ws_port), "--tcp-port", str(tcp_port)]
    if broker == GO:
        server = process("Go broker (log to /dev/null)", [str(params.go_bin / "pystrand-broker"), *ports],
                         logged=False)
    else:
        server = process("embedded broker", [sys.executable, "-m", "pystrands", "server", *ports])
    with server as broker_proc:
        wait_listening(ws_port, params.timeout)
        wait_listening(tcp_port, params.timeout)
        command = backend_command(backend, tcp_port, params.go_bin)
        with process(f"{backend} backend", command) as back:
            wait_upgrading(ws_port, PATHS["room"].format(room=0, client="ready"), params.timeout)
            yield ws_port, {"broker": [broker_proc.pid], "backend": [back.pid]}


def run_loadtest(ws_port: int, clients: int, pids: dict[str, list[int]], params: Params) -> dict[str, float]:
    """The Go load tester in sequential mode against ``ws_port``: its figures, and each side's CPU over its run."""
    command = [str(params.go_bin / "loadtest"), "-host", f"127.0.0.1:{ws_port}", "-clients", str(clients),
               "-duration", str(params.seconds), "-mode", "sequential"]
    cpu = {side: sum(map(cpu_seconds, each)) for side, each in pids.items()}
    mine, start = os.times(), time.monotonic()
    with process("Go load tester", command, piped=True) as tester:
        output = tester.communicate(timeout=params.seconds + params.timeout)[0]
        wall, now = time.monotonic() - start, os.times()
        figures = parse_loadtest(output)
        if not figures["received"]:
            raise ChildFailed(f"no reply came back: {figures}")
    used = {side: sum(map(cpu_seconds, each)) - cpu[side] for side, each in pids.items()}
    return {**figures, **{f"{side}_cpu": seconds / wall for side, seconds in used.items()},
            "broker_us_per_msg": used["broker"] / figures["received"] * 1e6,
            "load_cpu": (now.children_user + now.children_system - mine.children_user - mine.children_system) / wall}


def measure(broker: str, load: Load, params: Params) -> dict[str, float]:
    """One load against a fresh ``broker`` set-up: msgs/s, p50_us, p99_us, CPU in cores, broker us per message."""
    with setup(broker, load.backend, params) as (ws_port, pids):
        if load.tool == "loadtest":
            return run_loadtest(ws_port, load.clients, pids, params)
        figures = wsload.load(f"ws://127.0.0.1:{ws_port}{PATHS[load.tool]}", load.tool, load.clients,
                              params.seconds, watch=pids)
    return {"msgs_per_s": figures["delivered_per_s"], "errors": 0, "loss_percent": 0.0,
            **{key: figures[key] for key in ("p50_us", "p99_us", "broker_cpu", "broker_us_per_msg", "backend_cpu",
                                             "load_cpu")}}


# -- the benchmark ------------------------------------------------------------------------------------------


def label(load: Load, broker: str) -> str:
    """A set-up's row in the table."""
    return f"{load.label}: {broker}"


def bench(params: Params) -> dict[str, Any]:
    """Every load on both brokers, ``params.rounds`` interleaved rounds; prints the tables and the verdicts."""
    print(f"\n== go: our embedded broker against the reference Go broker ({params.go_bin}); {params.seconds} s per"
          f" load, {params.rounds} round(s), fresh processes per run, order reversed every other round")
    order = [(load, broker) for load in LOADS for broker in BROKERS]
    results: dict[str, dict[str, Any]] = {label(load, broker): {"runs": []} for load, broker in order}
    started = time.monotonic()
    for number in range(params.rounds):
        for load, broker in order if number % 2 == 0 else order[::-1]:
            entry = results[label(load, broker)]
            if "runs" not in entry:
                continue
            print(f"[{time.monotonic() - started:5.0f} s] go, round {number + 1} of {params.rounds}:"
                  f" {label(load, broker)}", file=sys.stderr, flush=True)
            try:
                entry["runs"].append(measure(broker, load, params))
            except ChildFailed as exc:
                print(f"  {label(load, broker)}: FAILED: {exc}", flush=True)
                entry.pop("runs")
                entry["error"] = str(exc)
    report(results)
    targets = verdicts(results)
    panels = [{"title": "Ours and the reference Go broker (msgs/s)", "groups": [load.label for load in LOADS],
               "series": {broker: [(summary(results[label(load, broker)], "msgs_per_s") or (0.0, 0.0))[0]
                                   for load in LOADS] for broker in BROKERS}}]
    return {"results": results, "targets": targets, "panels": panels}


def report(results: dict[str, dict[str, Any]]) -> None:
    """The per-set-up table, the ours/Go table, and a note per run that lost messages or failed."""
    rows = [[name, cell(summary(entry, "msgs_per_s")), cell(summary(entry, "p50_us")),
             cell(summary(entry, "p99_us")),
             *(cell(summary(entry, f"{side}_cpu"), "{:.2f}") for side in ("broker", "backend", "load")),
             cell(summary(entry, "broker_us_per_msg"), "{:.1f}")]
            for name, entry in results.items() if "runs" in entry]
    print_table("msgs/s delivered (loadtest: received), round trip us (loadtest: 0.1 ms steps), CPU in cores"
                " (1.00 = one core busy; the Go broker uses every core, ours one), broker CPU us per message;"
                " median ±half the spread of the rounds",
                ["set-up", "msgs/s", "p50 us", "p99 us", "broker CPU", "backend CPU", "load CPU", "broker us/msg"],
                rows)
    print_spread(results, {"msgs/s": "msgs_per_s", "p50": "p50_us"})
    pairs = [[load.label, *(round_ratios(results[label(load, OURS)], key, results[label(load, GO)])
                            for key in ("msgs_per_s", "p50_us", "broker_us_per_msg"))] for load in LOADS]
    print_table("ours / Go, per round (median ±half the spread of the rounds' ratios)",
                ["load", "msgs/s", "p50", "broker us/msg"], pairs)
    for name, entry in results.items():
        for number, run in enumerate(entry.get("runs", []), 1):
            if run["errors"] or run["loss_percent"]:
                print(f"  {name}, round {number}: {run['errors']:.0f} errors, {run['loss_percent']:.1f}% of the"
                      " messages sent not answered (a reply later than 500 ms fails the tester's connection)")
        if "error" in entry:
            print(f"  {name}: FAILED: {entry['error']}")


def verdicts(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's targets, ours against Go in the same rounds: echo at 50 clients per backend, and fan-out."""
    print("targets (issue 16):")
    targets = []
    for load in LOADS:
        ours, go = results[label(load, OURS)], results[label(load, GO)]
        targets.append(verdict(f"{load.label}: msgs/s ours/Go", over(ours, "msgs_per_s", go), 1.0))
        if load.tool != "room":
            targets.append(verdict(f"{load.label}: p50 ours/Go", over(ours, "p50_us", go), 1.2, at_most=True))
    return targets


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, check the Go binaries, run the benchmark, write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--go-bin", default=os.environ.get("PYSTRANDS_GO_BIN"),
                        help="directory of pystrand-broker, loadtest, echo-backend (default: $PYSTRANDS_GO_BIN)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=int, help="whole seconds of load per measurement (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    seconds = args.seconds if args.seconds is not None else 2 if args.quick else 5
    if rounds < 1:
        parser.error(f"--rounds must be at least 1, not {rounds}")
    if seconds < 1:
        parser.error(f"--seconds must be at least 1 (whole seconds: the Go load tester's unit), not {seconds}")
    try:
        go_bin = go_binaries(args.go_bin)
    except NoGoBroker as exc:
        print(f"go_compare.py: {exc}", file=sys.stderr)
        return 2
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    outcome = bench(Params(go_bin, rounds, seconds))
    save_outcome("go-compare", args.quick, outcome, [target["state"] for target in outcome["targets"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cluster benchmark (issue 13 item 6): one node, ``--workers 2`` and two nodes over Redis, same backend, same load.

    python benchmarks/run.py cluster [--quick] [--rounds N]   # or: python benchmarks/cluster.py [...]

Three set-ups, each started fresh in every round (rounds interleaved), each
with one backend process (``backends.py rooms``, the Twisted-native
``Backend``) and its own ``redis-server`` (no persistence) for the two that
cluster:

* ``1 node``: ``python -m pystrands server``;
* ``--workers 2``: ``python -m pystrands server --workers 2 --redis ...``; the
  backend lands on one worker, the kernel spreads the clients over both;
* ``2 nodes over Redis``: two ``python -m pystrands server --redis ...``, the
  backend on the first; clients alternate between the two, as a load
  balancer would spread them.

Two workloads, 100 WebSocket clients each, every client one 100 B message
in flight (closed loop):

* ``echo``: each message comes back to its sender (``message_to_connection``);
* ``fan-out``: 10 rooms of 10 clients (each room half on each node); each message
  goes to its whole room (``message_to_room``), and the sender's next
  message leaves when its own one comes back.

The load is ``wsload.py``'s, as in the broker benchmark: several worker
processes speaking raw WebSocket frames over asyncio (each client's 100 B
frame built and masked once; incoming frames read from their header), with
the URLs of all nodes. Its CPU share, the brokers' (every process of a
set-up, workers included), the backend's and Redis's are read from
``/proc`` over the measured window.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import wsload
from processes import ChildFailed, children, free_port, process, wait_listening
from run import BENCH, cell, over, print_spread, print_table, round_ratios, save_outcome, summary, verdict

SINGLE, WORKERS, NODES = "1 node", "--workers 2", "2 nodes over Redis"
#: ``--workers 2`` with the backend's connections on one worker: the other forwards its clients' events.
WORKERS_ONE = "--workers 2, backend on one"
SETUPS = [SINGLE, WORKERS, WORKERS_ONE, NODES]
ROOMS = 10
SIZE = 100
#: The backend's connections to the broker: with ``--workers 2``, one per worker, as a user would run it.
CONNECTIONS = 2
#: Backend starts allowed until the kernel spreads its connections as a set-up needs (each start: 1 in 2).
DRAWS = 12
#: The URL template (wsload.py) of each workload's clients, as the rooms backend of backends.py reads them.
PATHS = {"echo": "/ws/echo/{client}", "room": "/ws/room/{room}/{client}"}
#: The processes of a set-up whose CPU is counted, beside the load's.
SIDES = ("broker", "backend", "redis")


@dataclass(frozen=True)
class Params:
    """Sizes of one run."""

    rounds: int
    clients: int
    seconds: float
    warmup: float
    loadgens: int
    timeout: float


FULL = Params(rounds=3, clients=100, seconds=5.0, warmup=1.0, loadgens=2, timeout=60.0)
QUICK = Params(rounds=1, clients=20, seconds=0.5, warmup=0.2, loadgens=2, timeout=30.0)


# -- the set-ups ---------------------------------------------------------------------------------------------


@contextmanager
def redis_server(timeout: float) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A redis-server of its own on a free loopback port, without persistence: (its URL, its process)."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", tempfile.gettempdir()]
    with process("redis-server", command) as server:
        wait_listening(port, timeout)
        yield f"redis://127.0.0.1:{port}/0", server


@dataclass
class Running:
    """A started set-up: where clients connect, and the processes whose CPU is counted."""

    ws_ports: list[int]
    brokers: list[int]
    backend: int
    redis: int | None


@contextmanager
def setup(name: str, params: Params) -> Iterator[Running]:
    """Start ``name``'s brokers, its backend (and Redis); all killed on the way out."""
    broker = [sys.executable, "-m", "pystrands", "server"]
    with ExitStack() as stack:
        redis_url, redis = (None, None) if name == SINGLE else stack.enter_context(redis_server(params.timeout))
        nodes = 2 if name == NODES else 1
        ports = [(free_port(), free_port()) for _ in range(nodes)]
        pids = []
        for ws_port, tcp_port in ports:
            flags = ["--ws-port", str(ws_port), "--tcp-port", str(tcp_port)]
            flags += [] if redis_url is None else ["--redis", redis_url]
            flags += ["--workers", "2"] if name in (WORKERS, WORKERS_ONE) else []
            pids.append(stack.enter_context(process(f"{name} broker", broker + flags)).pid)
            wait_listening(ws_port, params.timeout)
            wait_listening(tcp_port, params.timeout)
        if name in (WORKERS, WORKERS_ONE):
            deadline = time.monotonic() + params.timeout
            while len(children(pids[0])) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        backend = [sys.executable, str(BENCH / "backends.py"), "rooms", "--port", str(ports[0][1]),
                   "--connections", str(CONNECTIONS)]
        for _ in range(DRAWS):
            backend_stack = stack.enter_context(ExitStack())
            backend_pid = backend_stack.enter_context(process("rooms backend", backend)).pid
            if name not in (WORKERS, WORKERS_ONE):
                break
            if (min(_backends_per_worker(redis_url, CONNECTIONS, params.timeout)) > 0) == (name == WORKERS):
                break
            backend_stack.close()  # the kernel did not spread the connections as this set-up needs: draw again
            _backends_per_worker(redis_url, 0, params.timeout)
        else:
            raise ChildFailed(f"the kernel did not spread the backend's connections as needed in {DRAWS} draws")
        yield Running([ws for ws, _ in ports], pids, backend_pid, None if redis is None else redis.pid)


def _backends_per_worker(redis_url: str | None, total: int, timeout: float) -> list[int]:
    """The 2 workers' backend counts once they add up to ``total``, from the nodes' ``alive`` keys in
    Redis (each holds its node's backend count, set again as soon as a backend comes or goes)."""
    assert redis_url is not None
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    script = ("local r = {} for _, k in ipairs(redis.call('keys', 'pystrands:alive:*')) do"
              " r[#r + 1] = redis.call('get', k) end return r")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = subprocess.run(["redis-cli", "-p", port, "--no-raw", "eval", script, "0"], capture_output=True,
                                 text=True, check=True).stdout
        counts = [int(line.split('"')[1]) for line in replies.splitlines() if '"' in line]
        if sum(counts) == total and len(counts) == 2:
            return counts
        time.sleep(0.1)
    raise ChildFailed(f"the workers did not report {total} backend connections in Redis")


def measure(name: str, workload: str, params: Params) -> dict[str, Any]:
    """One set-up, one workload (wsload's ``echo`` or ``room``): wsload's figures, and each side's CPU
    microseconds per round trip (``SIDE_us``)."""
    with setup(name, params) as running:
        urls = [f"ws://127.0.0.1:{port}{PATHS[workload]}" for port in running.ws_ports]
        watch = {"broker": running.brokers, "backend": [running.backend],
                 "redis": [] if running.redis is None else [running.redis]}
        figures = wsload.load(urls, workload, params.clients, params.seconds, procs=params.loadgens, rooms=ROOMS,
                              size=SIZE, warmup=params.warmup, watch=watch, timeout=params.timeout)
    return {**figures, **{f"{side}_us": figures[f"{side}_cpu"] * 1e6 / figures["round_trips_per_s"]
                          for side in SIDES}}


# -- the benchmark -------------------------------------------------------------------------------------------


def bench(params: Params) -> dict[str, Any]:
    """Every set-up for both workloads, ``params.rounds`` interleaved rounds; prints the tables and verdicts."""
    print(f"\n== cluster: {', '.join(SETUPS)}; {params.clients} clients, one 100 B message in flight each,"
          f" {params.seconds:g} s; echo, and fan-out in {ROOMS} rooms; {params.loadgens} load generator"
          f" processes; {params.rounds} round(s)")
    results: dict[str, dict[str, dict[str, Any]]] = {
        workload: {name: {"runs": []} for name in SETUPS} for workload in ("echo", "fan-out")}
    started = time.monotonic()
    for number in range(params.rounds):
        for name in SETUPS:
            for workload, entries in results.items():
                entry = entries[name]
                if "runs" not in entry:
                    continue
                print(f"[{time.monotonic() - started:5.0f} s] round {number + 1} of {params.rounds}: {name},"
                      f" {workload}", file=sys.stderr, flush=True)
                try:
                    entry["runs"].append(measure(name, "echo" if workload == "echo" else "room", params))
                except ChildFailed as exc:
                    print(f"  {name}, {workload}: FAILED: {exc}", flush=True)
                    entry.pop("runs")
                    entry["error"] = str(exc)
    for workload, entries in results.items():
        rate = "round_trips_per_s" if workload == "echo" else "delivered_per_s"
        rows = [[name, cell(summary(entry, "round_trips_per_s")), cell(summary(entry, "delivered_per_s")),
                 round_ratios(entry, rate, entries[SINGLE]), cell(summary(entry, "p50_us")),
                 cell(summary(entry, "p99_us")),
                 *(cell(summary(entry, f"{side}_cpu"), "{:.0%}") for side in ("load", *SIDES)),
                 cell(summary(entry, "broker_us"), "{:.1f}"), cell(summary(entry, "redis_us"), "{:.1f}")]
                for name, entry in entries.items() if "runs" in entry]
        print_table(f"{workload}: round trips/s, WebSocket messages delivered/s, ratio of {rate.split('_')[0]}/s to"
                    " 1 node per round, round trip us, CPU share (of one core) of each side, CPU us per round trip"
                    " of the brokers (all processes) and of Redis",
                    ["set-up", "round trips/s", "delivered/s", "x 1 node", "p50 us", "p99 us", "loadgen CPU",
                     "broker CPU", "backend CPU", "redis CPU", "broker us/msg", "redis us/msg"], rows)
        print_spread(entries, {"round trips/s": "round_trips_per_s"})
        for name, entry in entries.items():
            if "error" in entry:
                print(f"  {name}: FAILED: {entry['error']}")
    echo, fanout = results["echo"], results["fan-out"]
    targets = [verdict("2 nodes over Redis, echo round trips/s x 1 node",
                       over(echo[NODES], "round_trips_per_s", echo[SINGLE]), 0.7),
               verdict("--workers 2, fan-out delivered/s x 1 node",
                       over(fanout[WORKERS], "delivered_per_s", fanout[SINGLE]), 1.3)]
    return {"results": results, "targets": targets, "panels": []}


def main(argv: list[str] | None = None) -> int:
    """``cluster.py [--quick] [--rounds N] [--seconds S] [--loadgens P]``: run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the seconds-long smoke form")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds of load per measurement (default 5)")
    parser.add_argument("--loadgens", type=int, help="load generator processes (default 2)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    overrides = {key: value for key, value in (("rounds", args.rounds), ("seconds", args.seconds),
                                                ("loadgens", args.loadgens)) if value}
    params = Params(**{**params.__dict__, **overrides})
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    outcome = bench(params)
    save_outcome("cluster", args.quick, outcome, [target["state"] for target in outcome["targets"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())

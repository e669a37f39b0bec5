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

The load comes from several processes (``cluster.py loadgen``), written for
a low cost per message: raw WebSocket frames over asyncio, no WebSocket
library (a 100 B text frame built once, masked with a zero key; incoming
frames only have their header read). Each reports its CPU share; the
brokers', the backend's and Redis's shares are read from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_bench import free_port, wait_listening
from run import (
    BENCH,
    RESULTS,
    BackendFailed,
    _cpu_seconds,
    cell,
    over,
    print_spread,
    print_table,
    process,
    round_ratios,
    summary,
    verdict,
)

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
TAG = 8  # the first bytes of a message: the sender's number, so that it knows its own one in a room


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


# -- the load generator (a process of its own) --------------------------------------------------------------


class Client(asyncio.Protocol):
    """One WebSocket client: handshake, then its closed loop of 100 B text frames."""

    def __init__(self, number: int, host: str, path: str, stats: dict[str, Any]) -> None:
        self.tag = f"{number:0{TAG}d}".encode()
        payload = self.tag + b"x" * (SIZE - TAG)
        self.frame = bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # masked, with the zero key
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self.stats = stats
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.upgraded = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the handshake request."""
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        """A handshake cut short fails its ``opened``."""
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        """The handshake's answer first (101, or a refusal), then frames."""
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            del self.buffer[:end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionRefusedError(status.decode(errors="replace")))
                return
            self.upgraded = True
            self.opened.set_result(None)
        self.frames()

    def frames(self) -> None:
        """Read every complete frame: count text ones; on its own message back, send the next."""
        buffer, position, stats = self.buffer, 0, self.stats
        while len(buffer) - position >= 2:
            length, start = buffer[position + 1] & 0x7F, position + 2
            if length == 126:
                length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
            elif length == 127:
                length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
            if len(buffer) < start + length:
                break
            opcode = buffer[position] & 0x0F
            if opcode == 1:
                if stats["measuring"]:
                    stats["delivered"] += 1
                if buffer[start:start + TAG] == self.tag:
                    now = time.perf_counter()
                    if stats["measuring"]:
                        stats["latencies"].append(now - self.sent_at)
                    if stats["running"]:
                        self.send()
            position = start + length
        del buffer[:position]

    def send(self) -> None:
        """Send the client's message (its one in flight)."""
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.frame)


async def open_client(loop: asyncio.AbstractEventLoop, number: int, url: tuple[str, int], path: str,
                      stats: dict[str, Any], deadline: float) -> Client:
    """A client whose handshake succeeded, retried while its node answers 503 (no backend known yet)."""
    while True:
        client = Client(number, f"{url[0]}:{url[1]}", path, stats)
        await loop.create_connection(lambda: client, *url)  # noqa: B023  # awaited before the next loop
        try:
            await client.opened
            return client
        except (ConnectionError, ConnectionRefusedError):
            assert client.transport is not None
            client.transport.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def generate(ports: list[int], first: int, count: int, workload: str, seconds: float, warmup: float,
                   timeout: float) -> dict[str, Any]:
    """Connect clients ``first`` .. ``first + count - 1``, say so, wait for ``go`` on stdin, then load."""
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"measuring": False, "running": True, "delivered": 0, "latencies": []}
    deadline = time.monotonic() + timeout
    gate = asyncio.Semaphore(20)

    async def one(number: int) -> Client:
        path = f"/ws/echo/{number}" if workload == "echo" else f"/ws/room/{number % ROOMS}/{number}"
        async with gate:
            node = ports[number // ROOMS % len(ports)]  # a room's members alternate between the nodes
            return await open_client(loop, number, ("127.0.0.1", node), path, stats, deadline)

    clients = await asyncio.gather(*(one(number) for number in range(first, first + count)))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for client in clients:
        client.send()
    await asyncio.sleep(warmup)
    stats["measuring"], cpu, start = True, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    stats["measuring"], stats["running"] = False, False
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    latencies = stats["latencies"]
    return {"round_trips": len(latencies), "delivered": stats["delivered"], "seconds": elapsed,
            "cpu": cpu / elapsed, "latencies_us": [round(value * 1e6) for value in latencies]}


# -- the set-ups ---------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a supervisor's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and their children, so far."""
    return sum(_cpu_seconds(pid) for parent in pids for pid in [parent, *_children(parent)])


@contextmanager
def redis_server(timeout: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
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
            while len(_children(pids[0])) < 2 and time.monotonic() < deadline:
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
            raise BackendFailed(f"the kernel did not spread the backend's connections as needed in {DRAWS} draws")
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
    raise BackendFailed(f"the workers did not report {total} backend connections in Redis")


def measure(name: str, workload: str, params: Params) -> dict[str, float]:
    """One set-up, one workload: messages/s, latencies, and every process's CPU share."""
    with setup(name, params) as running, ExitStack() as stack:
        share, rest = divmod(params.clients, params.loadgens)
        loadgens, first = [], 0
        for index in range(params.loadgens):
            count = share + (index < rest)
            command = [sys.executable, str(Path(__file__).resolve()), "loadgen", "--ports",
                       ",".join(map(str, running.ws_ports)), "--first", str(first), "--count", str(count),
                       "--workload", workload, "--seconds", str(params.seconds), "--warmup", str(params.warmup),
                       "--timeout", str(params.timeout)]
            first += count
            loadgens.append(stack.enter_context(_piped(command)))
        for loadgen in loadgens:
            if loadgen.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                raise BackendFailed(f"a load generator did not connect its clients: {_stderr(loadgen)}")
        counted = {"broker": running.brokers, "backend": [running.backend],
                   "redis": [] if running.redis is None else [running.redis]}
        for loadgen in loadgens:
            loadgen.stdin.write("go\n")  # type: ignore[union-attr]
            loadgen.stdin.flush()  # type: ignore[union-attr]
        time.sleep(params.warmup)
        before, start = {side: _cpu(pids) for side, pids in counted.items()}, time.monotonic()
        time.sleep(params.seconds)
        wall = time.monotonic() - start
        cpu = {side: (_cpu(pids) - before[side]) / wall for side, pids in counted.items()}
        outcomes = []
        for loadgen in loadgens:
            out, _ = loadgen.communicate(timeout=params.timeout)
            if loadgen.returncode:
                raise BackendFailed(f"a load generator failed: {_stderr(loadgen)}")
            outcomes.append(json.loads(out.splitlines()[-1]))
    latencies = sorted(value for outcome in outcomes for value in outcome["latencies_us"])
    seconds = statistics.fmean(outcome["seconds"] for outcome in outcomes)
    if not latencies:
        raise BackendFailed("no message came back")
    rate = sum(outcome["round_trips"] for outcome in outcomes) / seconds
    return {"msgs_per_s": rate,
            "delivered_per_s": sum(outcome["delivered"] for outcome in outcomes) / seconds,
            "p50_us": latencies[len(latencies) // 2],
            "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "loadgen_cpu": sum(outcome["cpu"] for outcome in outcomes),
            **{f"{side}_cpu": value for side, value in cpu.items()},
            **{f"{side}_us": value * 1e6 / rate for side, value in cpu.items()}}


@contextmanager
def _piped(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A load generator with its stdin and stdout piped and its stderr kept; killed on the way out."""
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                                 env={**os.environ, "PYTHONPATH": str(BENCH.parent)})
        child.errors = errors  # type: ignore[attr-defined]
        try:
            yield child
        finally:
            child.kill()
            child.wait()


def _stderr(child: subprocess.Popen[str]) -> str:
    errors = child.errors  # type: ignore[attr-defined]
    errors.seek(0)
    return errors.read().strip()[-600:]


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
                except BackendFailed as exc:
                    print(f"  {name}, {workload}: FAILED: {exc}", flush=True)
                    entry.pop("runs")
                    entry["error"] = str(exc)
    for workload, entries in results.items():
        rate = "msgs_per_s" if workload == "echo" else "delivered_per_s"
        rows = [[name, cell(summary(entry, "msgs_per_s")), cell(summary(entry, "delivered_per_s")),
                 round_ratios(entry, rate, entries[SINGLE]), cell(summary(entry, "p50_us")),
                 cell(summary(entry, "p99_us")),
                 *(cell(summary(entry, f"{side}_cpu"), "{:.0%}") for side in ("loadgen", "broker", "backend", "redis")),
                 cell(summary(entry, "broker_us"), "{:.1f}"), cell(summary(entry, "redis_us"), "{:.1f}")]
                for name, entry in entries.items() if "runs" in entry]
        print_table(f"{workload}: round trips/s, WebSocket messages delivered/s, ratio of {rate.split('_')[0]}/s to"
                    " 1 node per round, round trip us, CPU share (of one core) of each side, CPU us per round trip"
                    " of the brokers (all processes) and of Redis",
                    ["set-up", "round trips/s", "delivered/s", "x 1 node", "p50 us", "p99 us", "loadgen CPU",
                     "broker CPU", "backend CPU", "redis CPU", "broker us/msg", "redis us/msg"], rows)
        print_spread(entries, {"round trips/s": "msgs_per_s"})
        for name, entry in entries.items():
            if "error" in entry:
                print(f"  {name}: FAILED: {entry['error']}")
    echo, fanout = results["echo"], results["fan-out"]
    targets = [verdict("2 nodes over Redis, echo round trips/s x 1 node",
                       over(echo[NODES], "msgs_per_s", echo[SINGLE]), 0.7),
               verdict("--workers 2, fan-out delivered/s x 1 node",
                       over(fanout[WORKERS], "delivered_per_s", fanout[SINGLE]), 1.3)]
    return {"results": results, "targets": targets, "panels": []}


def main(argv: list[str] | None = None) -> int:
    """``cluster.py [--quick] [--rounds N]`` runs the benchmark; ``cluster.py loadgen ...`` is one load generator."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        parser = argparse.ArgumentParser(description="one load generator process of the cluster benchmark")
        parser.add_argument("--ports", required=True)
        parser.add_argument("--first", type=int, required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--workload", choices=["echo", "room"], required=True)
        parser.add_argument("--seconds", type=float, required=True)
        parser.add_argument("--warmup", type=float, required=True)
        parser.add_argument("--timeout", type=float, required=True)
        args = parser.parse_args(argv[1:])
        ports = [int(port) for port in args.ports.split(",")]
        print(json.dumps(asyncio.run(generate(ports, args.first, args.count, args.workload, args.seconds,
                                              args.warmup, args.timeout))))
        return 0
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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"cluster{'-quick' if args.quick else ''}.json").write_text(json.dumps(outcome, indent=1))
    states = [target["state"] for target in outcome["targets"]]
    print(f"\ntargets: {states.count('PASS')} PASS, {states.count('FAIL')} FAIL, {states.count('n/a')} n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of this library's backends against the public ``pystrands`` 1.0.0 package (issue 7).

Run with the dev venv's Python, one command per benchmark:

    python benchmarks/run.py setup        # create benchmarks/.venv-public (pystrands 1.0.0, matplotlib)
    python benchmarks/run.py throughput   # 1: msgs/s of a 100 B flood, then ping-pong p50/p99
    python benchmarks/run.py sizes        # 2: MB/s at 100 B, 64 KiB and 1 MiB messages
    python benchmarks/run.py memory       # 3: peak RSS during a 1,000,000-frame flood, 1 ms handler
    python benchmarks/run.py e2e          # 4: WebSocket clients -> embedded broker -> backend
    python benchmarks/run.py broker       # 5: the broker end to end on wsload.py, beside its ceiling
    python benchmarks/run.py go           # ours against the reference Go broker (go_compare.py; PYSTRANDS_GO_BIN)
    python benchmarks/run.py all          # all six, one chart (go skipped, with a line saying why, without Go)
    python benchmarks/run.py cluster      # 6: 1 node, --workers 2, 2 nodes over Redis (cluster.py; not in "all")
    add --quick for the seconds-long smoke form CI runs.

This process is the broker simulator (``broker_sim``); every backend runs
alone in a subprocess of its own (``backends.py``), our faces with this
interpreter, the public ones with the benchmark venv's. Each benchmark
prints a table with the ratios to the public package measured in the same
run and a PASS/FAIL line per target of the issue; results and a PNG chart go
to ``benchmarks/results/`` (or ``--chart PATH``). While it runs, one line on
stderr per backend run says which benchmark, which round, which backend,
the time so far and an estimate of the time left. ``all`` takes about 10
minutes on 2 cores (``broker``, about 2.5 of them, prints its own progress).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import broker_bench
import broker_sim
from processes import REPO, ChildFailed, cpu_seconds, free_port, process, wait_listening

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PUBLIC_VENV = BENCH / ".venv-public"
PUBLIC_VERSION = "1.0.0"
PUBLIC_PYTHON = PUBLIC_VENV / "bin" / "python"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Spec:
    """A backend under test: its table label, its kind in backends.py, and who provides it."""

    label: str
    kind: str
    public: bool = False
    needs: str = ""  # a repo file that must exist (a face still being written may not yet)

    @property
    def path(self) -> Path | None:
        """First on its process's module path: this repository, or nothing (the public package's venv)."""
        return None if self.public else REPO

    def missing(self, public_python: Path | None) -> str | None:
        """Why this backend cannot run now, or None."""
        if self.public and public_python is None:
            return "public package venv not available"
        if self.needs and not (REPO / self.needs).exists():
            return f"{self.needs} not there yet"
        return None


CEILING = Spec("ceiling: raw-socket echo", "raw")
TWISTED = Spec("ours: Twisted-native Backend", "twisted")
CLIENT = Spec("ours: PyStrandsClient", "client", needs="pystrands/client.py")
ASYNC = Spec("ours: AsyncPyStrandsClient", "async", needs="pystrands/async_client.py")
APP = Spec("ours: PyStrands decorators", "app", needs="pystrands/app.py")
PUB_CLIENT = Spec("public: PyStrandsClient", "client", public=True)
PUB_ASYNC = Spec("public: AsyncPyStrandsClient", "async", public=True)
OURS = [TWISTED, CLIENT, ASYNC, APP]
SPECS = [CEILING, *OURS, PUB_CLIENT, PUB_ASYNC]


# -- the benchmark venv -------------------------------------------------------


def _venv_has(module: str) -> bool:
    """True if the benchmark venv's Python imports ``module``."""
    if not PUBLIC_PYTHON.exists():
        return False
    check = (f"import importlib.metadata as m, {module}; "
             f"assert '{module}' != 'pystrands' or m.version('pystrands') == '{PUBLIC_VERSION}'")
    return subprocess.run([str(PUBLIC_PYTHON), "-c", check], cwd=tempfile.gettempdir(),
                          capture_output=True).returncode == 0


def _pip(*packages: str) -> str | None:
    """Install ``packages`` into the benchmark venv; the error's last line on failure."""
    command = [str(PUBLIC_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--retries", "1", "--timeout", "15", *packages]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "pip timed out"
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["pip failed"])[-1]
    return None


def ensure_venv(chart: bool) -> Path | None:
    """The benchmark venv's Python with public pystrands (and matplotlib if ``chart``), or None."""
    if not PUBLIC_PYTHON.exists():
        print(f"creating {PUBLIC_VENV.relative_to(REPO)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PUBLIC_VENV)], check=True)
    if not _venv_has("pystrands"):
        error = _pip(f"pystrands=={PUBLIC_VERSION}")
        if error:
            print(f"SKIPPING the public package columns: cannot install pystrands=={PUBLIC_VERSION}"
                  f" ({error})", flush=True)
            return None
    if chart and not _venv_has("matplotlib"):
        error = _pip("matplotlib")
        if error:
            print(f"no chart: cannot install matplotlib ({error})", flush=True)
    return PUBLIC_PYTHON


# -- one backend in its own process ------------------------------------------


def _proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@dataclass
class Running:
    """A connected backend process: the simulator's socket to it and its pid."""

    sock: socket.socket
    pid: int

    def rss(self, peak: bool = False) -> int:
        """Resident memory now, or its peak so far (VmHWM), in bytes."""
        return _proc_status(self.pid, "VmHWM" if peak else "VmRSS")

    def cpu(self) -> float:
        """CPU seconds the backend has used so far."""
        return cpu_seconds(self.pid)


def backend_command(spec: Spec, public_python: Path | None, port: int, delay_ms: float = 0.0) -> list[str]:
    """The command line of ``spec`` connecting to 127.0.0.1:``port``."""
    python = str(public_python) if spec.public else sys.executable
    return [python, str(BENCH / "backends.py"), spec.kind, "--port", str(port), "--delay-ms", str(delay_ms)]


@contextmanager
def backend(spec: Spec, public_python: Path | None, delay_ms: float = 0.0,
            connect_timeout: float = 20.0) -> Iterator[Running]:
    """Start ``spec`` in a subprocess, accept its connection, and always kill it afterwards."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        command = backend_command(spec, public_python, listener.getsockname()[1], delay_ms)
        with process(spec.label, command, spec.path) as proc:
            deadline = time.monotonic() + connect_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ChildFailed("did not connect")
                try:
                    sock, _ = listener.accept()
                    break
                except socket.timeout:
                    continue
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                yield Running(sock, proc.pid)


# -- measurements -------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Sizes of one run of the benchmarks (full or --quick)."""

    rounds: int
    frames: int
    pings: int
    size_frames: dict[int, int]
    flood_frames: int
    flood_timeout: float
    timeout: float
    e2e_clients: tuple[int, ...]
    e2e_seconds: float
    quick: bool = False


FULL = Params(rounds=3, frames=200_000, pings=2000,
              size_frames={100: 100_000, 64 * 1024: 1000, MIB: 64},
              flood_frames=1_000_000, flood_timeout=20.0, timeout=120.0,
              e2e_clients=(10, 100, 1000), e2e_seconds=3.0)
QUICK = Params(rounds=1, frames=2000, pings=50,
               size_frames={100: 1000, 64 * 1024: 20, MIB: 4},
               flood_frames=2000, flood_timeout=10.0, timeout=20.0,
               e2e_clients=(10, 50), e2e_seconds=0.5, quick=True)
CLIENTS = 100  # simulated WebSocket clients the frames of a flood cycle through
WARMUP = 500


def measure_flood(run: Running, message_size: int, count: int, timeout: float) -> dict[str, float]:
    """Warm up, then flood ``count`` frames: msgs/s, MB/s and both sides' CPU share."""
    frames = broker_sim.client_frames(message_size, CLIENTS)
    broker_sim.flood(run.sock, frames, min(WARMUP, count), timeout)
    cpu = run.cpu()
    result = broker_sim.flood(run.sock, frames, count, timeout)
    if result.replies < count:
        raise broker_sim.SimulatorError(f"only {result.replies} of {count} replies within {timeout}s")
    return {
        "msgs_per_s": count / result.seconds,
        "mb_per_s": count * message_size / result.seconds / 1e6,
        "backend_cpu": (run.cpu() - cpu) / result.seconds,
        "sim_cpu": result.sim_cpu_seconds / result.seconds,
    }


def measure_ping(run: Running, count: int, timeout: float) -> dict[str, float]:
    """p50 and p99 round-trip microseconds of ``count`` one-at-a-time 100 B messages."""
    frame = broker_sim.client_frames(100, 1)[0]
    times = broker_sim.ping_pong(run.sock, frame, count, timeout)
    return {"p50_us": broker_sim.percentile(times, 0.5) * 1e6, "p99_us": broker_sim.percentile(times, 0.99) * 1e6}


def measure_memory(run: Running, count: int, timeout: float) -> dict[str, float]:
    """Idle RSS after a warm-up, then a flood of ``count`` frames (cut at ``timeout``) and peak RSS."""
    frames = broker_sim.client_frames(100, CLIENTS)
    broker_sim.flood(run.sock, frames, 200, timeout)
    idle = run.rss()
    result = broker_sim.flood(run.sock, frames, count, timeout)
    return {"handled": result.replies, "seconds": result.seconds, "idle_mib": idle / MIB,
            "peak_mib": run.rss(peak=True) / MIB}


def on_backend(measure: Callable[[Running], dict[str, float]], public_python: Path | None,
               delay_ms: float = 0.0) -> Callable[[Spec], dict[str, float]]:
    """``measure`` applied to a fresh process of each spec, connected to this simulator."""
    def run(spec: Spec) -> dict[str, float]:
        with backend(spec, public_python, delay_ms) as running:
            return measure(running)
    return run


def rounds_of(specs: list[Spec], public_python: Path | None, rounds: int,
              measure: Callable[[Spec], dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Run ``measure`` on each backend alone, ``rounds`` times interleaved: label -> values per round."""
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        missing = spec.missing(public_python)
        results[spec.label] = {"skipped": missing} if missing else {"runs": []}
    for number in range(rounds):
        for spec in specs:
            entry = results[spec.label]
            if "runs" not in entry:
                continue
            started = PROGRESS.starting(spec.label, number + 1, rounds)
            try:
                entry["runs"].append(measure(spec))
                PROGRESS.done(spec.label, started)
            except ChildFailed as exc:
                PROGRESS.failed(spec.label)
                print(f"  round {number + 1}/{rounds}: {spec.label}: FAILED", flush=True)
                entry.pop("runs")
                entry["error"] = str(exc)
    return results


def plan(params: Params) -> dict[str, tuple[list[Spec], int, float]]:
    """Per benchmark: its backends in order, its rounds, and a first guess of the seconds one backend
    run takes (a process start, then the work; the progress estimate replaces it with what it measures)."""
    no_ceiling = [spec for spec in SPECS if spec is not CEILING]
    sizes = sum(count * (size / 400e6 + 1 / 100_000) for size, count in params.size_frames.items())
    return {  # the guesses: what one run took on average in a full run on 2 cores (BENCHMARKS.md)
        "throughput": (SPECS, params.rounds, 1.0 + params.frames / 150_000 + params.pings * 1e-4),
        "sizes": ([*no_ceiling, CEILING], params.rounds, 1.0 + sizes),
        "memory": (no_ceiling, 1, 0.5 + params.flood_timeout),
        "e2e": (no_ceiling, params.rounds, 1.0 + len(params.e2e_clients) * (params.e2e_seconds + 0.5)),
        "broker": ([], params.rounds, 0.0),  # broker_bench reports its own progress
        "go": ([], params.rounds, 0.0),  # so does go_compare
    }


def _clock(seconds: float) -> str:
    """m:ss."""
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class Progress:
    """One line on stderr per backend run: the benchmark, the round, the backend, time so far and left.

    The time left is the sum over the runs still to do of what that backend
    took in this benchmark's earlier rounds, else the mean of this
    benchmark's runs so far, else ``plan``'s first guess.
    """

    def __init__(self, names: list[str], params: Params, public_python: Path | None) -> None:
        self.start = time.monotonic()
        self.names = names
        self.current = ""
        steps = plan(params)
        self.guess = {name: steps[name][2] for name in names}
        self.pending = [(name, spec.label) for name in names for _ in range(steps[name][1])
                        for spec in steps[name][0] if spec.missing(public_python) is None]
        self.took: dict[tuple[str, str], list[float]] = {}

    def begin(self, name: str) -> None:
        """The benchmark ``name`` starts."""
        self.current = name

    def estimate(self, name: str, label: str) -> float:
        """Seconds one run of backend ``label`` in benchmark ``name`` is expected to take."""
        mine = self.took.get((name, label))
        if mine:
            return statistics.fmean(mine)
        seen = [seconds for (bench, _), runs in self.took.items() if bench == name for seconds in runs]
        return statistics.fmean(seen) if seen else self.guess[name]

    def starting(self, label: str, number: int, rounds: int) -> float:
        """Print where the run is; returns the start time for ``done``."""
        left = sum(self.estimate(name, each) for name, each in self.pending)
        if (self.current, label) in self.pending:
            self.pending.remove((self.current, label))
        where = (f"{self.current} ({self.names.index(self.current) + 1} of {len(self.names)})"
                 if self.current in self.names else self.current or "benchmark")
        print(f"[{_clock(time.monotonic() - self.start)}] {where}, round {number} of {rounds}: {label};"
              f" about {_clock(left)} left", file=sys.stderr, flush=True)
        return time.monotonic()

    def done(self, label: str, started: float) -> None:
        """A run of ``label`` that started at ``started`` finished."""
        self.took.setdefault((self.current, label), []).append(time.monotonic() - started)

    def failed(self, label: str) -> None:
        """``label`` failed: its later rounds of this benchmark will not run."""
        self.pending = [step for step in self.pending if step != (self.current, label)]
        print(f"[{_clock(time.monotonic() - self.start)}] {label}: FAILED", file=sys.stderr, flush=True)


PROGRESS = Progress([], QUICK, None)


def summary(entry: dict[str, Any], key: str) -> tuple[float, float] | None:
    """(median, spread) of ``key`` over an entry's rounds; spread is (max - min) / median."""
    runs = entry.get("runs")
    if not runs:
        return None
    values = [run[key] for run in runs]
    middle = statistics.median(values)
    return middle, (max(values) - min(values)) / middle if middle else 0.0


# -- output -------------------------------------------------------------------


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    print(f"\n{title}")
    for row in [headers, *rows]:
        cells = [str(row[0]).ljust(widths[0])] + [str(cell).rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())


def print_spread(results: dict[str, dict[str, Any]], keys: dict[str, str]) -> None:
    """One line per measure: how far the rounds of one backend were apart, over the table's backends.

    The figure is the table's ``±``: half of (highest - lowest) / median of a
    backend's rounds; the line gives its median and its highest over the rows.
    """
    for name, key in keys.items():
        spreads = {label: value[1] * 50 for label, entry in results.items()
                   if (value := summary(entry, key)) is not None and len(entry["runs"]) > 1}
        if spreads:
            worst = max(spreads, key=spreads.__getitem__)
            print(f"  spread of the rounds, {name}: median ±{statistics.median(spreads.values()):.0f}%,"
                  f" highest ±{spreads[worst]:.0f}% ({worst})")


def cell(value: tuple[float, float] | None, fmt: str = "{:,.0f}") -> str:
    """A median with its spread, or a dash."""
    if value is None:
        return "-"
    middle, spread = value
    return fmt.format(middle) + (f" ±{spread * 50:.0f}%" if spread else "")


def round_ratio(entry: dict[str, Any], key: str, base: dict[str, Any],
                base_key: str | None = None) -> tuple[float, float] | None:
    """(median, spread) of the per-round ratios ``entry[key] / base[base_key]``, or None.

    Rounds are interleaved, so round i of both backends ran minutes apart at
    most: the spread of these ratios is the noise of the ratio itself. The
    tables and the verdicts both use this median.
    """
    runs, base_runs = entry.get("runs"), base.get("runs")
    if not runs or not base_runs:
        return None
    values = [run[key] / other[base_key or key] for run, other in zip(runs, base_runs, strict=False)
              if other[base_key or key]]
    if not values:
        return None
    middle = statistics.median(values)
    return middle, (max(values) - min(values)) / middle if middle else 0.0


def round_ratios(entry: dict[str, Any], key: str, base: dict[str, Any], base_key: str | None = None) -> str:
    """``round_ratio`` as a table cell: ``2.50x ±4%`` (± half the spread), or a dash."""
    value = round_ratio(entry, key, base, base_key)
    if value is None:
        return "-"
    middle, spread = value
    return f"{middle:.2f}x" + (f" ±{spread * 50:.0f}%" if spread else "")


def notes(results: dict[str, dict[str, Any]]) -> None:
    """Print why a backend has no figures (skipped or failed)."""
    for label, entry in results.items():
        if "skipped" in entry:
            print(f"  {label}: skipped ({entry['skipped']})")
        if "error" in entry:
            print(f"  {label}: FAILED: {entry['error']}")


def save_outcome(name: str, quick: bool, outcome: dict[str, Any], states: list[str]) -> Path:
    """Write ``outcome`` to ``results/NAME[-quick].json``, print how the targets' ``states`` went; the file."""
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    saved.write_text(json.dumps(outcome, indent=1))
    print(f"\ntargets: {states.count('PASS')} PASS, {states.count('FAIL')} FAIL, {states.count('n/a')} n/a")
    return saved


def verdict(target: str, value: float | None, bound: float, at_most: bool = False) -> dict[str, Any]:
    """Print and return a PASS/FAIL line (n/a without a figure) for ``value`` against ``bound``."""
    if value is None:
        state = "n/a"
    else:
        state = "PASS" if (value <= bound if at_most else value >= bound) else "FAIL"
    shown = "-" if value is None else f"{value:,.2f}"
    print(f"  [{state}] {target}: {shown} ({'<=' if at_most else '>='} {bound:,.2f})")
    return {"target": target, "value": value, "bound": bound, "state": state}


def over(entry: dict[str, Any], key: str, base: dict[str, Any], base_key: str | None = None) -> float | None:
    """The median of the per-round ratios (``round_ratio``) as a number, or None."""
    value = round_ratio(entry, key, base, base_key)
    return None if value is None else value[0]


# -- the benchmarks -----------------------------------------------------------


def bench_throughput(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Benchmark 1: 100 B flood msgs/s and ping-pong latency per backend."""
    print(f"\n== 1. throughput: {params.frames:,} x 100 B frames over {CLIENTS} clients,"
          f" then {params.pings:,} ping-pongs; {params.rounds} round(s)")

    def measure(run: Running) -> dict[str, float]:
        return {**measure_flood(run, 100, params.frames, params.timeout),
                **measure_ping(run, params.pings, params.timeout)}

    specs, rounds, _ = plan(params)["throughput"]
    results = rounds_of(specs, public_python, rounds, on_backend(measure, public_python))
    rate = {label: summary(entry, "msgs_per_s") for label, entry in results.items()}
    p50 = {label: summary(entry, "p50_us") for label, entry in results.items()}
    rows = [[label, cell(rate[label]), round_ratios(entry, "msgs_per_s", results[PUB_CLIENT.label]),
             round_ratios(entry, "msgs_per_s", results[PUB_ASYNC.label]), cell(p50[label], "{:,.0f}"),
             cell(summary(entry, "p99_us"), "{:,.0f}"), cell(summary(entry, "backend_cpu"), "{:.0%}"),
             cell(summary(entry, "sim_cpu"), "{:.0%}")]
            for label, entry in results.items()]
    print_table("msgs/s (median ±half the spread), ratios per round (median ±half their spread),"
                " round trip in microseconds",
                ["backend", "msgs/s", "x pub sync", "x pub async", "p50 us", "p99 us", "backend CPU", "sim CPU"],
                rows)
    print_spread(results, {"msgs/s": "msgs_per_s", "p50": "p50_us"})
    notes(results)
    print("targets:")
    targets = [
        verdict("Twisted-native msgs/s >= 3x public PyStrandsClient",
                over(results[TWISTED.label], "msgs_per_s", results[PUB_CLIENT.label]), 3.0),
        verdict("ours AsyncPyStrandsClient >= 2x public async",
                over(results[ASYNC.label], "msgs_per_s", results[PUB_ASYNC.label]), 2.0),
        verdict("ours PyStrandsClient >= 1.2x public",
                over(results[CLIENT.label], "msgs_per_s", results[PUB_CLIENT.label]), 1.2),
        verdict("issue 16: Twisted-native msgs/s >= 4x public PyStrandsClient",
                over(results[TWISTED.label], "msgs_per_s", results[PUB_CLIENT.label]), 4.0),
        verdict("issue 16: ours AsyncPyStrandsClient >= 2.5x public async",
                over(results[ASYNC.label], "msgs_per_s", results[PUB_ASYNC.label]), 2.5),
    ]
    for spec in OURS:
        targets.append(verdict(f"{spec.label} ping-pong p50 <= public PyStrandsClient's (ratio)",
                               over(results[spec.label], "p50_us", results[PUB_CLIENT.label]), 1.0,
                               at_most=True))
    ceiling = f"{rate[CEILING.label][0]:,.0f}" if rate[CEILING.label] else "-"
    panels = [
        panel(f"1. Throughput, 100 B messages (msgs/s; simulator ceiling {ceiling}, not drawn)", results,
              {"msgs/s": "msgs_per_s"}),
        panel("1. Ping-pong round trip (microseconds)", results, {"p50": "p50_us", "p99": "p99_us"}),
    ]
    return {"results": results, "targets": targets, "panels": panels}


def bench_sizes(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Benchmark 2: MB/s at 100 B, 64 KiB and 1 MiB messages per backend."""
    sizes = list(params.size_frames)
    print(f"\n== 2. message sizes: {', '.join(f'{n:,} x {_size(s)}' for s, n in params.size_frames.items())};"
          f" {params.rounds} round(s)")

    def measure(run: Running) -> dict[str, float]:
        return {str(size): measure_flood(run, size, count, params.timeout)["mb_per_s"]
                for size, count in params.size_frames.items()}

    specs, rounds, _ = plan(params)["sizes"]
    results = rounds_of(specs, public_python, rounds, on_backend(measure, public_python))
    rate = {label: [summary(entry, str(size)) for size in sizes] for label, entry in results.items()}
    rows = [[label, *(cell(value, "{:,.1f}") for value in rate[label]),
             round_ratios(entry, str(sizes[-1]), entry, str(sizes[-2])),
             round_ratios(entry, str(sizes[-1]), results[PUB_CLIENT.label])]
            for label, entry in results.items()]
    print_table("MB/s of message payload (median ±half the spread); ratios per round (median ±half their spread)",
                ["backend", *(_size(s) for s in sizes), "1MiB / 64KiB", "1MiB x pub sync"], rows)
    print_spread(results, {f"{_size(size)} MB/s": str(size) for size in sizes})
    notes(results)
    print("targets:")
    targets = [verdict(f"{spec.label} 1 MiB MB/s >= 0.8x its 64 KiB MB/s",
                       over(results[spec.label], str(sizes[-1]), results[spec.label], str(sizes[-2])), 0.8)
               for spec in OURS]
    panels = [panel("2. Throughput by message size (MB/s; the simulator ceiling is in the table)", results,
                    {_size(size): str(size) for size in sizes})]
    return {"results": results, "targets": targets, "panels": panels}


#: The stated bound for benchmark 3: peak RSS above the idle RSS, whatever the flood's length.
RSS_GROWTH_BOUND_MIB = 64.0


def bench_memory(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Benchmark 3: peak RSS of each backend during a long flood with a 1 ms handler."""
    print(f"\n== 3. memory: {params.flood_frames:,} x 100 B frames as fast as taken, 1 ms handler,"
          f" cut at {params.flood_timeout:.0f} s per backend")
    specs, rounds, _ = plan(params)["memory"]
    measure = on_backend(lambda run: measure_memory(run, params.flood_frames, params.flood_timeout),
                         public_python, delay_ms=1.0)
    results = rounds_of(specs, public_python, rounds, measure)
    rows = []
    for label, entry in results.items():
        run = (entry.get("runs") or [None])[0]
        if run is None:
            rows.append([label, "-", "-", "-", "-", "-"])
            continue
        rows.append([label, f"{run['handled']:,.0f}", f"{run['seconds']:.1f}", f"{run['idle_mib']:.1f}",
                     f"{run['peak_mib']:.1f}", f"{run['peak_mib'] - run['idle_mib']:.1f}"])
    print_table(f"RSS of the backend process in MiB (one run; bound: peak - idle <= {RSS_GROWTH_BOUND_MIB:.0f} MiB)",
                ["backend", "frames handled", "seconds", "idle MiB", "peak MiB", "peak - idle"], rows)
    notes(results)
    print("targets:")
    targets = []
    for spec in OURS:
        run = (results[spec.label].get("runs") or [None])[0]
        targets.append(verdict(f"{spec.label} peak RSS growth (MiB) during the flood",
                               None if run is None else run["peak_mib"] - run["idle_mib"],
                               RSS_GROWTH_BOUND_MIB, at_most=True))
    panels = [panel("3. RSS during the flood, 1 ms handler (MiB)", results, {"idle": "idle_mib", "peak": "peak_mib"})]
    return {"results": results, "targets": targets, "panels": panels}


def measure_e2e(spec: Spec, public_python: Path | None, params: Params) -> dict[str, float]:
    """The embedded broker and ``spec`` in processes of their own, loaded by loadgen.py at each client count."""
    ws_port, tcp_port = free_port(), free_port()
    broker = [sys.executable, "-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port)]
    result: dict[str, float] = {}
    with process("embedded broker", broker) as broker_proc:
        wait_listening(ws_port, params.timeout)
        with process(spec.label, backend_command(spec, public_python, tcp_port), spec.path):
            for clients in params.e2e_clients:
                command = [sys.executable, str(BENCH / "loadgen.py"), "--url", f"ws://127.0.0.1:{ws_port}/ws/bench",
                           "--clients", str(clients), "--seconds", str(params.e2e_seconds),
                           "--timeout", str(params.timeout)]
                cpu, broker_cpu, start = os.times(), cpu_seconds(broker_proc.pid), time.monotonic()
                try:
                    done = subprocess.run(command, capture_output=True, text=True,
                                          timeout=params.timeout * 2 + params.e2e_seconds)
                except subprocess.TimeoutExpired:
                    raise ChildFailed(f"loadgen with {clients} clients timed out") from None
                if done.returncode:
                    raise ChildFailed(f"loadgen with {clients} clients failed: {done.stderr.strip()[-400:]}")
                wall, now = time.monotonic() - start, os.times()
                figures = json.loads(done.stdout.splitlines()[-1])
                result.update({f"{clients}:{key}": figures[key] for key in ("msgs_per_s", "p50_us", "p99_us")})
                result[f"{clients}:loadgen_cpu"] = (now.children_user + now.children_system
                                                    - cpu.children_user - cpu.children_system) / wall
                result[f"{clients}:broker_cpu"] = (cpu_seconds(broker_proc.pid) - broker_cpu) / wall
    return result


def bench_e2e(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Benchmark 4: WebSocket clients -> embedded broker -> each backend, msgs/s and latency per client count."""
    counts = params.e2e_clients
    print(f"\n== 4. end to end: {', '.join(map(str, counts))} WebSocket clients (loadgen.py, closed loop,"
          f" 100 B) -> embedded broker -> backend, {params.e2e_seconds:g} s each; {params.rounds} round(s)")
    if not (REPO / "pystrands" / "broker" / "service.py").exists():
        print("  skipped: the embedded broker (pystrands/broker/service.py) is not there yet")
        return {"results": {}, "targets": [], "panels": []}
    specs, rounds, _ = plan(params)["e2e"]
    results = rounds_of(specs, public_python, rounds, lambda spec: measure_e2e(spec, public_python, params))
    rows = []
    for label, entry in results.items():
        row = [label]
        for clients in counts:
            rate = summary(entry, f"{clients}:msgs_per_s")
            row += [cell(rate), round_ratios(entry, f"{clients}:msgs_per_s", results[PUB_CLIENT.label]),
                    cell(summary(entry, f"{clients}:p50_us")), cell(summary(entry, f"{clients}:p99_us"))]
        rows.append(row)
    headers = ["backend"] + [f"{c} {name}" for c in counts for name in ("msgs/s", "x pub", "p50 us", "p99 us")]
    print_table("msgs/s over all clients (median ±half the spread), ratio to public PyStrandsClient per round"
                " (median ±half their spread), round trip us",
                headers, rows)
    print_spread(results, {f"{clients} clients msgs/s": f"{clients}:msgs_per_s" for clients in counts})
    for side in ("loadgen", "broker"):
        highest = {clients: max((run[f"{clients}:{side}_cpu"] for entry in results.values()
                                 for run in entry.get("runs", [])), default=0.0) for clients in counts}
        print(f"  {side} CPU share over a loadgen run (of one core), highest seen: "
              + ", ".join(f"{c} clients {v:.0%}" for c, v in highest.items()))
    notes(results)
    panels = [panel("4. End to end through the embedded broker (msgs/s)", results,
                    {f"{clients} clients": f"{clients}:msgs_per_s" for clients in counts})]
    return {"results": results, "targets": [], "panels": panels}


def panel(title: str, results: dict[str, dict[str, Any]], series: dict[str, str]) -> dict[str, Any]:
    """A chart panel for chart.py: per backend, the median of each series' key (the ceiling is left out)."""
    groups = [label for label in results if label != CEILING.label]
    return {"title": title, "groups": groups, "series": {
        name: [(summary(results[label], key) or (0.0, 0.0))[0] for label in groups] for name, key in series.items()}}


def _size(size: int) -> str:
    """100 B, 64 KiB, 1 MiB."""
    return f"{size // MIB} MiB" if size >= MIB else f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def bench_broker(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Benchmark 5: the embedded broker end to end under wsload.py, beside the harness ceiling (broker_bench.py)."""
    def progress(where: str) -> None:
        print(f"[{_clock(time.monotonic() - PROGRESS.start)}] {where}", file=sys.stderr, flush=True)

    return broker_bench.bench_broker(params.quick, params.rounds, progress)


def bench_go(params: Params, public_python: Path | None) -> dict[str, Any]:
    """Our broker against the reference Go broker (go_compare.py), if ``PYSTRANDS_GO_BIN`` holds its binaries."""
    import go_compare

    try:
        go_bin = go_compare.go_binaries(os.environ.get("PYSTRANDS_GO_BIN"))
    except go_compare.NoGoBroker as exc:
        print(f"\n== go: skipped: {exc}")
        return {"results": {}, "targets": [], "panels": []}
    return go_compare.bench(go_compare.Params(go_bin, params.rounds, 2 if params.quick else 5))


BENCHMARKS: dict[str, Callable[[Params, Path | None], dict[str, Any]]] = {
    "throughput": bench_throughput,
    "sizes": bench_sizes,
    "memory": bench_memory,
    "e2e": bench_e2e,
    "broker": bench_broker,
    "go": bench_go,
}


def draw_chart(panels: list[dict[str, Any]], path: Path, public_python: Path | None) -> None:
    """Render ``panels`` to a PNG with the benchmark venv's matplotlib (chart.py), if it has it."""
    if public_python is None:
        print(f"\nno chart: it is drawn with {PUBLIC_VENV.relative_to(REPO)}'s matplotlib, and this run has no venv")
        return
    if not _venv_has("matplotlib"):
        print(f"\nno chart: matplotlib is not in {PUBLIC_VENV.relative_to(REPO)} (run.py setup installs it)")
        return
    data = RESULTS / f"{path.stem}-panels.json"
    data.write_text(json.dumps(panels, indent=1))
    subprocess.run([str(public_python), str(BENCH / "chart.py"), str(data), str(path)], check=True,
                   timeout=120)
    print(f"\nchart: {path}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmark(s)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", *BENCHMARKS, "cluster", "all"])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke form (small N, one round)")
    parser.add_argument("--rounds", type=int, help="repetitions per backend (default 3, quick 1)")
    parser.add_argument("--no-public", action="store_true", help="skip the public package (no venv, no network)")
    parser.add_argument("--chart", type=Path, help="PNG path (default benchmarks/results/COMMAND.png)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.rounds:
        params = Params(**{**params.__dict__, "rounds": args.rounds})
    if args.command == "setup":
        return 0 if ensure_venv(chart=True) else 1
    if args.command == "cluster":  # needs redis-server, not the public venv; not part of "all"
        import cluster

        return cluster.main(["--quick"] * args.quick + ["--rounds", str(args.rounds)] * bool(args.rounds))
    public_python = None if args.no_public else ensure_venv(chart=not args.quick)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]};"
          f" public pystrands {'from ' + str(PUBLIC_VENV.relative_to(REPO)) if public_python else 'SKIPPED'}")
    names = list(BENCHMARKS) if args.command == "all" else [args.command]
    global PROGRESS
    PROGRESS = Progress(names, params, public_python)
    outcome = {}
    for name in names:
        PROGRESS.begin(name)
        outcome[name] = BENCHMARKS[name](params, public_python)
    saved = save_outcome(args.command, args.quick, outcome,
                         [target["state"] for name in names for target in outcome[name]["targets"]])
    draw_chart([panel for name in names for panel in outcome[name]["panels"]],
               args.chart or saved.with_suffix(".png"), public_python)
    print(f"[{_clock(time.monotonic() - PROGRESS.start)}] {args.command}: done", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""go_compare.py (issue 16, ours against the reference Go broker): what runs without Go.

The parser of the Go load tester's results is checked on its real output
(recorded on this machine, 2026-11-30, sequential and blast mode); the
readiness probe on real sockets; the command line's checks and the skip of
``run.py go`` when no Go binaries are given, in real processes.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import go_compare  # noqa: E402  (benchmarks/ is not a package)

#: ``loadtest -host 127.0.0.1:P -clients 50 -duration 3 -mode sequential``, Go broker, Go echo backend.
SEQUENTIAL = """\
2026/11/30 09:50:37 PyStrands Load Tester
2026/11/30 09:50:37   Target:   ws://127.0.0.1:60093/ws/loadtest
2026/11/30 09:50:37   Clients:  50
2026/11/30 09:50:37   Duration: 3s
2026/11/30 09:50:37   Mode:     sequential
2026/11/30 09:50:37 Connecting 50 clients...
2026/11/30 09:50:37 Connected 50 clients in 50.386367ms

═══════════════════════════════════════════════════
  RESULTS: 50 clients, sequential mode, 3s
═══════════════════════════════════════════════════
  Sent:      69548 (23183 msg/s)
  Received:  69548 (23183 msg/s)
  Errors:    0
  Loss:      0.0%
  Latency:   p50=1.9ms  p95=4.3ms  p99=5.8ms
  Max lat:   9.8ms
═══════════════════════════════════════════════════
"""

#: The same in its default blast mode (each client's connection fails at its first read timeout).
BLAST = """\

═══════════════════════════════════════════════════
  RESULTS: 50 clients, blast mode, 3s
═══════════════════════════════════════════════════
  Sent:      500000 (166667 msg/s)
  Received:  28 (9 msg/s)
  Errors:    50
  Loss:      100.0%
  Latency:   p50=12.6ms  p95=15.7ms  p99=35.0ms
  Max lat:   35.0ms
═══════════════════════════════════════════════════
"""


def test_parse_loadtest_reads_every_figure_of_a_sequential_run() -> None:
    figures = go_compare.parse_loadtest(SEQUENTIAL)
    assert figures == {"clients": 50, "seconds": 3, "sent": 69548, "received": 69548, "errors": 0,
                       "loss_percent": 0.0, "p50_us": pytest.approx(1900), "p95_us": pytest.approx(4300),
                       "p99_us": pytest.approx(5800), "msgs_per_s": pytest.approx(69548 / 3)}
    assert round(figures["msgs_per_s"]) == 23183  # the tester's own rate: received / nominal duration


def test_parse_loadtest_reads_errors_and_loss() -> None:
    figures = go_compare.parse_loadtest(BLAST)
    assert (figures["sent"], figures["received"], figures["errors"], figures["loss_percent"]) == (500000, 28, 50,
                                                                                                  100.0)
    assert figures["p99_us"] == pytest.approx(35000)


def test_parse_loadtest_refuses_output_cut_before_its_figures() -> None:
    latency = SEQUENTIAL.index("  Latency:")
    for cut in (0, SEQUENTIAL.index("  RESULTS"), SEQUENTIAL.index("  Sent:"), SEQUENTIAL.index("  Loss:"),
                latency, latency + 20):
        with pytest.raises(ValueError, match="load tester"):
            go_compare.parse_loadtest(SEQUENTIAL[:cut])
    assert go_compare.parse_loadtest(SEQUENTIAL[:SEQUENTIAL.index("  Max lat:")])["p99_us"] == pytest.approx(5800)


def test_parse_loadtest_does_not_take_the_header_for_the_results() -> None:
    header_only = SEQUENTIAL[:SEQUENTIAL.index("\n\n")] + "\n  Sent: 5\n  Received: 5\n"
    with pytest.raises(ValueError, match="RESULTS"):
        go_compare.parse_loadtest(header_only)


def make_binaries(directory: Path, names: list[str], mode: int = 0o755) -> None:
    """Files named ``names`` in ``directory`` with ``mode`` (the check looks at names and modes only)."""
    for name in names:
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(mode)


def test_go_binaries_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(go_compare.NoGoBroker, match=r"PYSTRANDS_GO_BIN is not set .*: build them as BENCHMARKS\.md"):
        go_compare.go_binaries(None)
    with pytest.raises(go_compare.NoGoBroker, match="has no executable pystrand-broker: build them as BENCHMARKS"):
        go_compare.go_binaries(tmp_path)
    make_binaries(tmp_path, ["pystrand-broker", "loadtest"])
    with pytest.raises(go_compare.NoGoBroker, match="has no executable echo-backend"):
        go_compare.go_binaries(str(tmp_path))
    make_binaries(tmp_path, ["echo-backend"], mode=stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(go_compare.NoGoBroker, match="has no executable echo-backend"):
        go_compare.go_binaries(tmp_path)
    (tmp_path / "echo-backend").chmod(0o755)
    assert go_compare.go_binaries(str(tmp_path)) == tmp_path


def run_go_compare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """benchmarks/go_compare.py with ``args`` in a subprocess."""
    return subprocess.run([sys.executable, str(BENCH / "go_compare.py"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_missing_binary_is_one_line_naming_it(tmp_path: Path) -> None:
    make_binaries(tmp_path, ["pystrand-broker", "echo-backend"])
    done = run_go_compare("--go-bin", str(tmp_path), "--quick")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{tmp_path} has no executable loadtest" in lines[0]
    assert "BENCHMARKS.md" in lines[0] and "PYSTRANDS_GO_BIN" in lines[0]


def test_the_binaries_directory_comes_from_the_environment_too(tmp_path: Path) -> None:
    env = {**os.environ, "PYSTRANDS_GO_BIN": str(tmp_path)}
    done = run_go_compare(env=env)
    assert done.returncode == 2
    assert f"{tmp_path} has no executable pystrand-broker" in done.stderr


@pytest.mark.parametrize(("args", "error"), [
    (["--rounds", "0"], "--rounds must be at least 1, not 0"),
    (["--rounds", "-2"], "--rounds must be at least 1, not -2"),
    (["--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
    (["--seconds", "0"], "--seconds must be at least 1 (whole seconds: the Go load tester's unit), not 0"),
    (["--seconds", "1.5"], "argument --seconds: invalid int value: '1.5'"),
])
def test_bad_arguments_are_refused_before_anything_runs(args: list[str], error: str) -> None:
    done = run_go_compare("--go-bin", "/nonexistent", *args)
    assert done.returncode == 2
    assert error in done.stderr, done.stderr
    assert done.stdout == ""


def test_run_py_skips_the_go_section_with_a_line_saying_how_to_enable_it() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYSTRANDS_GO_BIN"}
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "go", "--quick", "--no-public"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("== go:")]
    assert len(skipped) == 1, done.stdout
    assert "skipped" in skipped[0] and "PYSTRANDS_GO_BIN=DIR" in skipped[0] and "BENCHMARKS.md" in skipped[0]
    assert "targets: 0 PASS, 0 FAIL, 0 n/a" in done.stdout


@contextmanager
def answering(*status_lines: bytes) -> Iterator[int]:
    """A server on 127.0.0.1 answering its n-th connection with ``status_lines[n]`` (the last one after);
    yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        served = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(status_lines[min(served, len(status_lines) - 1)] + b"\r\n\r\n")
            served += 1

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_readiness_waits_for_a_handshake_that_upgrades() -> None:
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0", b"HTTP/1.1 200 OK\r\nContent-Length: 0",
                   b"HTTP/1.1 101 Switching Protocols") as port:
        go_compare.wait_upgrading(port, "/ws/room/0/ready", timeout=5)


def test_readiness_gives_up_in_time_quoting_the_last_answer() -> None:
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0") as port, \
            pytest.raises(TimeoutError, match=r"within 0.5s \(last answer: HTTP/1.1 200 OK\)"):
        go_compare.wait_upgrading(port, "/ws/room/0/ready", timeout=0.5)

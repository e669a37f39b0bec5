"""A worker never outlives its supervisor: real processes, the supervisor gone before or after the worker started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, TIMEOUT

#: A stand-in supervisor: it forks a child that waits until the stand-in has exited (its parent is no longer the
#: stand-in), then becomes a worker of the stand-in, as a worker whose supervisor died before its prctl ran.
ORPHAN = """
import os, sys, time
supervisor = os.getpid()
child = os.fork()
if child == 0:
    while os.getppid() == supervisor:
        time.sleep(0.01)
    os.execv(sys.executable, [sys.executable, "-m", "pystrands", "worker", str(supervisor), *sys.argv[1:]])
print(child, flush=True)
"""


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie that nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], timeout: float = TIMEOUT) -> list[int]:
    """The processes of ``pids`` still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if not gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_worker_whose_supervisor_is_not_its_parent_does_not_start() -> None:
    other = subprocess.Popen([sys.executable, "-c", "pass"])
    other.wait()
    done = subprocess.run([sys.executable, "-m", "pystrands", "worker", str(other.pid), "--ws-port", "0",
                           "--tcp-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"pystrands worker: its supervisor (pid {other.pid}) is gone; not starting\n"


def test_a_worker_whose_supervisor_died_before_it_started_exits() -> None:
    """The death signal is asked for after the parent died: it never comes, so the worker must see it itself."""
    stand_in = subprocess.Popen([sys.executable, "-c", ORPHAN, "--ws-port", "0", "--tcp-port", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = int(stand_in.stdout.readline())  # type: ignore[union-attr]
    try:
        assert stand_in.wait(TIMEOUT) == 0
        assert wait_gone([worker]) == [], "the orphaned worker kept running"
        assert stand_in.stderr.read() == (  # type: ignore[union-attr]  # EOF: the worker has closed it too
            f"pystrands worker: its supervisor (pid {stand_in.pid}) is gone; not starting\n")
    finally:
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_workers_end_when_their_supervisor_is_killed(start_workers) -> None:
    supervisor = start_workers(2)
    workers = list(supervisor.worker_pids().values())
    assert len(workers) == 2
    supervisor.process.kill()  # SIGKILL: the supervisor cannot stop them itself
    supervisor.process.wait(TIMEOUT)
    assert wait_gone(workers) == [], f"workers still running {TIMEOUT} s after their supervisor died"


@pytest.mark.parametrize(("arguments", "error"), [
    ([], "usage: python -m pystrands worker SUPERVISOR_PID [pystrands server options]"),
    (["--ws-port", "0"], "usage: python -m pystrands worker SUPERVISOR_PID [pystrands server options]"),
    (["0"], "pystrands worker: the supervisor's pid must be >= 1, not 0"),
    (["-3", "--ws-port", "0"], "pystrands worker: the supervisor's pid must be >= 1, not -3"),
])
def test_a_worker_started_without_a_supervisor_pid_is_a_usage_error(arguments: list[str], error: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pystrands", "worker", *arguments], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == error + "\n"

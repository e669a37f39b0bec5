"""The benchmarks' child processes: a free port for one, start it, wait until it listens, read its CPU, kill it.

Every server, backend and load generator process of ``run.py``, ``broker_bench.py``,
``cluster.py``, ``go_compare.py`` and ``wsload.py`` runs under :func:`process`, so that each is killed
however the benchmark ends, and a failure while it runs says which process it was and
what it printed last.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Lines of a failed child's output quoted in the error.
TAIL = 6


class ChildFailed(RuntimeError):
    """A child process of a benchmark did not start, died, or what was measured with it failed."""


@contextmanager
def process(label: str, command: list[str], path: Path | None = REPO,
            piped: bool = False, logged: bool = True) -> Iterator[subprocess.Popen[str]]:
    """Run ``command``; always kill it on the way out.

    ``path`` goes first on the child's module path: this repository, another
    checkout to compare, or None for a venv's own packages only (the public
    package). Its output goes to a temporary file; with ``piped`` its stdin and
    stdout are pipes (text) and only stderr goes there; without ``logged`` it
    goes to /dev/null (a child that logs per message would fill the disk and
    spend its time writing it; its failures then quote nothing). An exception raised
    while it runs comes out as :class:`ChildFailed`: ``label`` and the error,
    then the last lines of that output (a ChildFailed from a process started
    inside this one gets them added). The ``PYSTRAND_*`` variables of this
    environment are left out: they would override the ports and settings both
    brokers are given on their command lines.
    """
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONPATH" and not key.startswith("PYSTRAND_")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    with tempfile.TemporaryFile("w+", errors="replace") as log:
        sink = log if logged else subprocess.DEVNULL
        child = subprocess.Popen(command, stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if piped else sink, stderr=sink, env=env,
                                 cwd=tempfile.gettempdir(), text=True)
        try:
            yield child
        except Exception as exc:
            log.seek(0)
            tail = log.read().strip().splitlines()[-TAIL:]
            said = f"\n  {label}, its last output:" + "".join(f"\n    | {line}" for line in tail) if tail else ""
            if isinstance(exc, ChildFailed):  # from a process started inside this one: add this one's output
                exc.args = (f"{exc}{said}",)
                raise
            raise ChildFailed(f"{label}: {exc}{said}") from exc
        finally:
            child.kill()
            child.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; TimeoutError after ``timeout`` (inside
    :func:`process`, a ChildFailed with the process's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a ``--workers`` supervisor's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds so far of process ``pid`` (all its threads) and of its children."""
    total = 0.0
    for each in [pid, *children(pid)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total

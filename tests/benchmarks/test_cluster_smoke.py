"""benchmarks/run.py cluster --quick: the three set-ups and both workloads run and print their tables.

Timing targets are not checked here (the benchmark reports them); this keeps
the harness from rotting. It needs Debian's redis-server, as tests/workers do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_cluster_benchmark_quick_form_prints_both_tables() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: install Debian's redis-server (.ci/run does)")
    done = subprocess.run([sys.executable, str(RUN), "cluster", "--quick"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    tables = done.stdout.split("\nfan-out: ")
    assert len(tables) == 2, done.stdout
    for table in tables:
        for setup in ("1 node", "--workers 2", "2 nodes over Redis"):
            row = next((line for line in table.splitlines() if line.startswith(setup + "  ")), None)
            assert row is not None, done.stdout
            assert int(row[len(setup):].split()[0].replace(",", "")) > 0, row
    assert "targets:" in done.stdout

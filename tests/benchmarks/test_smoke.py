"""Each benchmark of benchmarks/run.py in its --quick form: it runs and prints its table.

Timing targets are not checked here (they are reported by the benchmark
itself); these tests only keep the benchmarks from rotting. The public
package's venv is created once per session; without network the benchmarks
run with --no-public and only the public columns are skipped.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
OUR_LABELS = ["ours: Twisted-native Backend", "ours: PyStrandsClient", "ours: AsyncPyStrandsClient",
              "ours: PyStrands decorators"]


def run_benchmark(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """benchmarks/run.py with ``args`` in a subprocess, output captured."""
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def public_args() -> list[str]:
    """[] when the public package's venv is ready, else ["--no-public"] (with a warning that says why)."""
    setup = run_benchmark("setup", "--quick", timeout=300)
    if setup.returncode == 0:
        return []
    warnings.warn(f"public pystrands venv unavailable, public columns skipped: {setup.stdout.strip()[-300:]}")
    return ["--no-public"]


def table_row(output: str, label: str) -> list[str]:
    """The cells after ``label`` in the benchmark's table."""
    for line in output.splitlines():
        if line.startswith(label + "  "):
            return line[len(label):].split()
    raise AssertionError(f"no table row for {label!r} in:\n{output}")


@pytest.mark.parametrize("benchmark", ["throughput", "sizes", "memory", "e2e"])
def test_benchmark_quick_form_prints_its_table(benchmark: str, public_args: list[str]) -> None:
    done = run_benchmark(benchmark, "--quick", *public_args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    for label in OUR_LABELS:
        assert table_row(done.stdout, label)[0] != "-", done.stdout
    if not public_args:
        assert table_row(done.stdout, "public: PyStrandsClient")[0] != "-", done.stdout
    assert "targets:" in done.stdout

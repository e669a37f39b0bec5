"""The library type-checks strictly, a user's typed program type-checks against it, and ruff passes.

Each check runs the tool as a developer would, from the repository root, with
the configuration in pyproject.toml; a failure prints the tool's report.
"""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root, its output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_the_library_passes_mypy_strict() -> None:
    """``mypy`` with pyproject.toml's settings: --strict, mypy-zope, on pystrands/ and the twistd plugin."""
    result = run("mypy")
    assert result.returncode == 0, report(result)


def test_a_typed_user_program_passes_mypy_strict() -> None:
    """typed_user_program.py, which uses every documented face, checks as a user's own strict code."""
    result = run("mypy", "--config-file", str(HERE / "user-mypy.ini"), str(HERE / "typed_user_program.py"))
    assert result.returncode == 0, report(result)


def test_the_typed_user_program_imports_without_running() -> None:
    """Its classes and decorators are valid at run time too; nothing connects on import."""
    program = importlib.import_module("tests.quality.typed_user_program")
    assert program.app.client is None
    assert program.round_trip(program.EXAMPLE_CONTEXT) == program.EXAMPLE_CONTEXT


def test_ruff_passes() -> None:
    """``ruff check`` with pyproject.toml's rule set."""
    result = run("ruff", "check", "pystrands", "twisted", "tests/quality")
    assert result.returncode == 0, report(result)


def test_the_package_ships_its_py_typed_marker() -> None:
    """PEP 561: without ``py.typed`` in the wheel, users' type checkers ignore the annotations."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "py.typed" in setup["options.package_data"]["pystrands"].split()
    assert (ROOT / "pystrands" / "py.typed").is_file()

"""Every ``--version`` prints this package's version (``pystrands.__version__``), not Twisted's."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import pystrands

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = str(pathlib.Path(sys.executable).parent / "twistd")
EXPECTED = f"pystrands-twisted {pystrands.__version__}\n"


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "pystrands", "--version"],
    [sys.executable, "-m", "pystrands", "server", "--version"],
    [TWISTD, "pystrands", "--version"],
    [TWISTD, "pystrands-broker", "--version"],
], ids=["python -m pystrands", "python -m pystrands server", "twistd pystrands", "twistd pystrands-broker"])
def test_version_commands_print_this_package_version(command: list[str], tmp_path: pathlib.Path) -> None:
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, EXPECTED, "")


def test_help_describes_the_version_option() -> None:
    from pystrands.broker.config import Options as BrokerOptions
    from pystrands.tap import Options as BackendOptions

    for options in (BackendOptions(), BrokerOptions()):
        assert "Print the pystrands-twisted version and exit." in str(options)


def test_setup_cfg_reads_the_version_from_the_package() -> None:
    assert "version = attr: pystrands.__version__" in (ROOT / "setup.cfg").read_text()

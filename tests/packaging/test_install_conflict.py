"""The public ``pystrands`` 1.0.0 and this package share the import name: a mixed install fails loudly.

Real installs, as a user makes them: this project built as a wheel (once per
session, from a copy of the working tree) and the public package downloaded
from the package index (once per session; no index means a failing test,
never a skip), installed with pip into fresh virtual environments, in both
orders. Each environment is made without pip and without dependencies of its
own: a ``.pth`` line puts this interpreter's site-packages (Twisted and the
other runtime dependencies) behind its own, which keeps each case to seconds.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from pystrands import __version__
from pystrands._install import REPAIR

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def pip(*args: str) -> None:
    result = subprocess.run([*PIP, *args], check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"ours": this project's wheel, "public": pystrands 1.0.0's wheel from the package index}."""
    work = tmp_path_factory.mktemp("wheels")
    source = work / "source"
    shutil.copytree(ROOT / "pystrands", source / "pystrands",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (source / "twisted" / "plugins").mkdir(parents=True)
    shutil.copy(ROOT / "twisted" / "plugins" / "pystrands_plugin.py", source / "twisted" / "plugins")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(work), str(source))
    pip("download", "--quiet", "--no-deps", "--only-binary", ":all:", "--dest", str(work), "pystrands==1.0.0")
    return {"ours": next(work.glob("pystrands_twisted-*.whl")), "public": next(work.glob("pystrands-1.0.0-*.whl"))}


class Environment:
    """A fresh virtual environment in ``folder`` whose python runs from ``folder`` (not this checkout)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "env")], check=True, timeout=60)
        self.python = str(folder / "env" / "bin" / "python")
        purelib = subprocess.run([self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        self.site_packages = Path(purelib)
        (self.site_packages / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    def install(self, wheel: Path) -> None:
        pip("--python", self.python, "install", "--quiet", "--no-deps", "--no-index", str(wheel))

    def uninstall(self, *names: str) -> None:
        pip("--python", self.python, "uninstall", "--yes", *names)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        environ = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        return subprocess.run([self.python, *args], check=False, cwd=self.folder, env=environ, capture_output=True,
                              text=True, timeout=60)


@pytest.fixture
def environment(tmp_path: Path) -> Environment:
    return Environment(tmp_path)


def assert_refused(result: subprocess.CompletedProcess[str], folder: Path) -> None:
    """The run failed with the one error that names both distributions, the folder and the repair."""
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: {folder / 'pystrands'} holds files of pystrands-twisted "), last
    assert "and of pystrands 1.0.0: both install the import name 'pystrands'" in last, last
    assert last.endswith(f"Repair with: {REPAIR}"), last


def test_alone_it_imports_and_runs(environment: Environment, wheels: dict[str, Path]) -> None:
    environment.install(wheels["ours"])
    result = environment.run("-c", "import pystrands, pystrands.broker; print(pystrands.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(environment.site_packages / "pystrands" / "__init__.py")
    assert environment.run("-m", "pystrands", "--version").stdout == f"pystrands-twisted {__version__}\n"


def test_public_package_installed_first_is_refused_on_import(environment: Environment,
                                                              wheels: dict[str, Path]) -> None:
    environment.install(wheels["public"])
    environment.install(wheels["ours"])  # overwrites the public package's __init__.py, client.py, ...
    assert_refused(environment.run("-c", "import pystrands"), environment.site_packages)
    assert_refused(environment.run("-m", "pystrands", "--version"), environment.site_packages)

    environment.uninstall("pystrands", "pystrands-twisted")  # the repair the error names
    environment.install(wheels["ours"])
    assert environment.run("-c", "import pystrands").returncode == 0


def test_public_package_installed_last_is_refused_by_our_modules(environment: Environment,
                                                                 wheels: dict[str, Path]) -> None:
    environment.install(wheels["ours"])
    environment.install(wheels["public"])  # its __init__.py replaces ours: no code of ours runs on import
    bare = environment.run("-c", "import pystrands; print(hasattr(pystrands, '__version__'))")
    assert (bare.returncode, bare.stdout) == (0, "False\n"), bare.stderr  # the public package's own
    for args in (["-c", "import pystrands.service"], ["-c", "from pystrands.broker import BrokerService"],
                 ["-c", TWISTD, "pystrands", "--version"], ["-c", TWISTD, "pystrands-broker", "--version"]):
        assert_refused(environment.run(*args), environment.site_packages)


def test_an_init_that_is_not_ours_is_refused_without_foreign_metadata(environment: Environment,
                                                                      wheels: dict[str, Path]) -> None:
    environment.install(wheels["ours"])
    init = environment.site_packages / "pystrands" / "__init__.py"
    init.unlink()  # as `pip uninstall pystrands` leaves it after the public package was installed last
    result = environment.run("-c", "import pystrands.service")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: {init} is not pystrands-twisted's: another package with the import name"
                    f" 'pystrands' (the public pystrands 1.0.0) overwrote or removed it. Repair with: {REPAIR}")

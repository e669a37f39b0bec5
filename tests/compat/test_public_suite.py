"""pystrands 1.0.0's own test suite, from its source distribution on the package index, run against this package.

This package is a drop-in replacement for pystrands 1.0.0: that release's
tests must pass here, except the few that read private attributes of its
implementation (DESELECTED, each with its reason). The source distribution is
downloaded once into .compat/ (ignored by git) and checked against a pinned
sha256; only its tests/ are unpacked, so its own ``pystrands`` package can
never be imported. They run in a subprocess, bounded in time, under
pytest-asyncio, with tests/compat/sandbox.py checking that ``pystrands`` is
this checkout's and keeping the traffic on the loopback interface.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path, PurePosixPath

import pytest

from tests.compat import sandbox

ROOT = Path(__file__).resolve().parents[2]
#: Where the source distribution is kept and its tests run (in .gitignore).
CACHE = ROOT / ".compat"
RELEASE = "pystrands==1.0.0"
SDIST = CACHE / "pystrands-1.0.0.tar.gz"
SDIST_SHA256 = "2488d3bd205c2e7b40e502800918a41a5808dd3b51e9a68c126d315a2f2239a1"
#: The sdist's folder of tests, and where they are unpacked to run (the ids below are relative to RUN_DIR).
SDIST_TESTS = PurePosixPath("pystrands-1.0.0/tests")
RUN_DIR = CACHE / "pystrands-1.0.0"
#: Seconds for the download, and for the whole 1.0.0 suite (about 30 s).
DOWNLOAD_TIMEOUT = 180
RUN_TIMEOUT = 600
#: The configuration the 1.0.0 suite runs with, written next to its tests/ (so that this
#: checkout's pyproject.toml, above it, is not taken for its configuration).
INI = """\
# Written by tests/compat/test_public_suite.py for pystrands 1.0.0's tests.
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

#: The 1.0.0 tests not run, each with its reason: all read a private attribute of 1.0.0's implementation.
DESELECTED = {
    "tests/test_async_client.py::TestAsyncReconnection::test_no_reconnect_on_intentional_disconnect": (
        "after its public check (connected is False after disconnect(), no reconnection), asserts 1.0.0's "
        "private flag client._intentional_disconnect"
    ),
    "tests/test_client.py::TestReconnection::test_no_reconnect_on_intentional_disconnect": (
        "after its public check (connected is False after disconnect(), no reconnection), asserts 1.0.0's "
        "private flag client._intentional_disconnect"
    ),
    "tests/test_client.py::TestRunForever::test_run_forever_uses_event": (
        "re-implements run_forever() around 1.0.0's private threading.Event client._stop_event instead of "
        "calling run_forever()"
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download() -> None:
    """Fetch the source distribution into CACHE; pip checks the pinned hash before it builds anything."""
    CACHE.mkdir(exist_ok=True)
    requirement = CACHE / "requirement.txt"
    requirement.write_text(f"{RELEASE} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "--dest", str(CACHE), "-r", str(requirement)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Could not download {RELEASE}'s source distribution within {DOWNLOAD_TIMEOUT}s: this "
                    f"test needs the package index (CI has it)", pytrace=False)
    if result.returncode != 0 or not SDIST.exists():
        pytest.fail(f"Could not download {RELEASE}'s source distribution from the package index, which this "
                    f"test needs (CI has it): {' '.join(command)} said:\n{result.stderr.strip()}", pytrace=False)


def unpack_tests() -> None:
    """RUN_DIR: the sdist's tests/ (only), fresh, and the INI."""
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    (RUN_DIR / "tests").mkdir(parents=True)
    (RUN_DIR / "pytest.ini").write_text(INI)
    with tarfile.open(SDIST) as sdist:
        for member in sdist.getmembers():
            path = PurePosixPath(member.name)
            if member.isfile() and path.parent == SDIST_TESTS and path.suffix == ".py":
                extracted = sdist.extractfile(member)
                assert extracted is not None
                (RUN_DIR / "tests" / path.name).write_bytes(extracted.read())
    assert list((RUN_DIR / "tests").glob("test_*.py")), f"{SDIST} holds no {SDIST_TESTS}/test_*.py"


def run_suite(*selection: str) -> tuple[str, list[str]]:
    """``python -m pytest`` on RUN_DIR's ``selection``, with this checkout first on the path.

    Its output, and its failures as pytest summarises them: ``FAILED <test id> - <error line>``.
    """
    command = [sys.executable, "-m", "pytest", *selection, "-q", "-rfE", "-p", "no:cacheprovider",
               "-p", "no:twisted", "-p", "asyncio", "-p", "tests.compat.sandbox"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "400"}  # the summary's error lines, uncut
    try:
        result = subprocess.run(command, cwd=RUN_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as timeout:
        output = timeout.stdout.decode(errors="replace") if isinstance(timeout.stdout, bytes) else timeout.stdout
        pytest.fail(f"pystrands 1.0.0's suite did not finish within {RUN_TIMEOUT}s; its output so far:\n{output}",
                    pytrace=False)
    output = result.stdout + result.stderr
    assert f"{sandbox.HEADER}{sandbox.EXPECTED}" in output, f"not this checkout's pystrands under test:\n{output}"
    summary = result.stdout.partition("short test summary info")[2]
    failures = [line for line in summary.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if result.returncode not in (0, 1) or (result.returncode == 1) != bool(failures):
        pytest.fail(f"pystrands 1.0.0's suite could not run (pytest exit {result.returncode}):\n{output}",
                    pytrace=False)
    return result.stdout, failures


def failed_id(failure: str) -> str:
    """The test id of a ``FAILED <test id> - <error line>`` line."""
    return failure.split()[1]


def test_pystrands_1_0_0_suite_passes_against_this_package() -> None:
    """Its tests sleep for fixed times, so one that fails is run once more, alone; failing twice fails here."""
    if not SDIST.exists():
        download()
    assert sha256(SDIST) == SDIST_SHA256, f"{SDIST} is not the pinned {RELEASE}: delete it to download it again"
    unpack_tests()
    output, failures = run_suite("tests", *(f"--deselect={test_id}" for test_id in DESELECTED))
    deselected = re.search(r"(\d+) deselected", output)
    assert deselected is not None and int(deselected[1]) == len(DESELECTED), (
        f"DESELECTED lists {len(DESELECTED)} tests, but pytest deselected "
        f"{deselected[1] if deselected else 'none'}: an id no longer matches a 1.0.0 test"
    )
    if not failures:
        return
    failed_once = [failed_id(failure) for failure in failures]
    _, still_failing = run_suite(*failed_once)
    passed_again = sorted(set(failed_once) - {failed_id(failure) for failure in still_failing})
    if passed_again:
        warnings.warn(f"pystrands 1.0.0 tests that failed, then passed when run again: {passed_again}", stacklevel=1)
    if still_failing:
        pytest.fail(f"{len(still_failing)} of pystrands 1.0.0's tests fail against this package, twice "
                    f"(run in {RUN_DIR}):\n" + "\n".join(still_failing), pytrace=False)


def test_a_failed_download_fails_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    index = f"http://127.0.0.1:{closed.getsockname()[1]}/simple"
    closed.close()  # nothing listens there now: the connection is refused
    monkeypatch.setattr(sys.modules[__name__], "CACHE", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SDIST", tmp_path / SDIST.name)
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index, "PIP_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(pytest.fail.Exception) as failed:
        download()
    assert str(failed.value).startswith(f"Could not download {RELEASE}'s source distribution from the package index")
    assert "No matching distribution found for pystrands==1.0.0" in str(failed.value)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_the_sandbox_refuses_traffic_beyond_loopback() -> None:
    program = (
        "import socket\n"
        "from tests.compat.sandbox import allow_loopback_only\n"
        "allow_loopback_only()\n"
        "listener = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(listener.getsockname(), timeout=5).close()\n"
        "try:\n"
        "    socket.socket().connect(('192.0.2.1', 9))\n"
        "except PermissionError as refused:\n"
        "    print(refused)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "except PermissionError as refused:\n"
        "    print(refused)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the pystrands 1.0.0 suite may reach loopback only, not '192.0.2.1' (socket.connect)",
        "the pystrands 1.0.0 suite may reach loopback only, not 'example.com' (socket.getaddrinfo)",
    ]


def test_the_sandbox_stops_a_run_under_another_pystrands(tmp_path: Path) -> None:
    (tmp_path / "pystrands").mkdir()
    (tmp_path / "pystrands" / "__init__.py").write_text("")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.compat.sandbox", "test_nothing.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"pystrands was imported from {tmp_path.resolve() / 'pystrands' / '__init__.py'}" in result.stderr

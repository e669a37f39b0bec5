"""`twistd pystrands` as a user runs it: a subprocess against a fake broker, and its errors."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.support.fakebroker import FakeBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = str(pathlib.Path(sys.executable).parent / "twistd")


def twistd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TWISTD, "-n", "--pidfile=", "pystrands", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("spec", ["tests.core.sample_backends.Echo", "tests.core.sample_backends:echo_instance"])
def test_twistd_runs_a_backend_that_answers_the_broker(spec: str) -> None:
    with FakeBroker() as broker:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "pystrands", "--backend", spec,
             "--broker", f"tcp:host=127.0.0.1:port={broker.port}", "--reconnect-delay", "0.1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            conn = broker.accept(timeout=20)
            conn.send_frame({"request_id": "r1", "action": "connection_request",
                             "params": {"headers": {}, "url": "/ws/lobby", "remote_addr": "127.0.0.1:1"}})
            reply = conn.recv_frame(timeout=10)
            assert reply["request_id"] == "r1" and reply["params"]["accepted"] is True
            assert reply["params"]["room_id"] == "lobby"
            conn.send_frame({"request_id": "m1", "action": "new_message", "params": {
                "message": "hi", "context": {"client_id": reply["params"]["client_id"], "room_id": "lobby",
                                             "metadata": {"accepted": True, "client_id": "x", "room_id": "lobby",
                                                          "metadata": {"via": "twistd"}}}}})
            sent = conn.recv_frame(timeout=10)
            assert sent["action"] == "message_to_room" and sent["params"] == {"room_id": "lobby",
                                                                              "message": "echo:hi:twistd"}
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=20)
        # Twisted re-raises the stopping signal once shut down cleanly.
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "Server Shut Down" in output and "Traceback" not in output, output
        conn.wait_closed(5)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "--backend is required"),
        (["--backend", "nodots"], "expected module.attr"),
        (["--backend", "no_such_module_xyz.Backend"], "cannot import module 'no_such_module_xyz'"),
        (["--backend", "tests.core.broken_module.X"], "importing 'tests.core.broken_module' failed: RuntimeError"),
        (["--backend", "tests.core.sample_backends.Missing"], "has no attribute 'Missing'"),
        (["--backend", "tests.core.sample_backends.not_a_backend"], "is not a backend"),
        (["--backend", "tests.core.sample_backends.Incomplete"], "is not a backend"),
        (["--backend", "tests.core.sample_backends.NeedsArguments"], "NeedsArguments() failed: TypeError"),
        (["--backend", "tests.core.sample_backends.Echo", "--broker", "nonsense:x"], "is not a client endpoint string"),
        (["--backend", "tests.core.sample_backends.Echo", "--reconnect-delay", "soon"], "--reconnect-delay 'soon' is not a number"),
        (["--backend", "tests.core.sample_backends.Echo", "--concurrency", "0"], "--concurrency must be >= 1"),
        (["--backend", "tests.core.sample_backends.Echo", "--reconnect-backoff", "0.5"], "--reconnect-backoff must be"),
        (["--backend", "tests.core.sample_backends.Echo", "--idle-timeout", "-1"], "--idle-timeout must be"),
        (["--backend", "tests.core.sample_backends.Echo", "--max-line-length", "10"], "--max-line-length must be >= 64"),
        (["--backend", "tests.core.sample_backends.Echo", "--stop-timeout", "nan"], "--stop-timeout must be a finite number"),
        (["--backend", "tests.core.sample_backends.Echo", "--no-such-flag"], "no-such-flag"),
    ],
)
def test_twistd_bad_arguments_give_a_one_line_error(args: list[str], error: str) -> None:
    result = twistd(*args)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    last = output.strip().splitlines()[-1]  # twistd prints the usage, then the one-line error
    assert error in last, output
    assert "Traceback" not in output


def test_wheel_in_a_fresh_venv_registers_the_plugin(tmp_path: pathlib.Path) -> None:
    """Built as a wheel and installed (not editable), `twistd --help` lists pystrands."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    [wheel] = wheels.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, timeout=600, capture_output=True, env=env)
    listed = subprocess.run([str(venv / "bin" / "twistd"), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "pystrands" in listed.stdout, listed.stdout + listed.stderr
    names = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import pystrands, twisted.plugins.pystrands_plugin as p; print(pystrands.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert str(venv) in names.stdout, "imported from the installed wheel, not the work tree"

"""The faces as a user runs them in a process of their own: Ctrl-C, twistd, no global reactor."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.faces.conftest import accept_client, event, nested_context
from tests.support.fakebroker import FakeBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = str(pathlib.Path(sys.executable).parent / "twistd")


def python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


RUN_FOREVER = """
    import sys
    from pystrands import PyStrandsClient

    class MyBackend(PyStrandsClient):
        def on_message(self, message, context):
            self.send_room_message(context.room_id, f"echo: {message}")

    client = MyBackend(host="localhost", port=int(sys.argv[1]))
    try:
        client.run_forever()  # Blocks until KeyboardInterrupt or disconnect
    except KeyboardInterrupt:
        print("Shutting down...")
    print("returned; global reactor installed:", "twisted.internet.reactor" in sys.modules)
"""


ASYNC_RUN_FOREVER = """
    import asyncio, sys
    from tests.faces.sample_backends import AsyncEcho

    try:
        # Ctrl-C cancels the main task: run_forever() disconnects, then lets the cancel through,
        # which asyncio.run() turns back into KeyboardInterrupt.
        asyncio.run(AsyncEcho(host="localhost", port=int(sys.argv[1])).run_forever())
    except KeyboardInterrupt:
        print("Shutting down...")
    print("returned; global reactor installed:", "twisted.internet.reactor" in sys.modules)
"""


@pytest.mark.parametrize(("script", "echo"), [(RUN_FOREVER, "echo: hi"), (ASYNC_RUN_FOREVER, "hi:task")],
                         ids=["blocking", "asyncio.run"])
def test_ctrl_c_ends_run_forever_with_exit_status_0(broker: FakeBroker, script: str, echo: str) -> None:
    process = python(script, str(broker.port))
    try:
        conn = broker.accept(timeout=20)
        assert accept_client(conn)["accepted"] is True
        conn.send_frame(event("new_message", nested_context("a", "lobby", {}), message="hi"))
        assert conn.recv_frame(10)["params"] == {"room_id": "lobby", "message": echo}
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "returned; global reactor installed: False" in output and "Traceback" not in output, output
    conn.wait_closed()


def run_twistd(broker: FakeBroker, spec: str, *options: str,
               backend_options: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", *options, "pystrands", "--backend", spec,
         "--broker", f"tcp:host=127.0.0.1:port={broker.port}", "--reconnect-delay", "0.1", *backend_options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize(
    ("spec", "options", "reply"),
    [
        ("tests.faces.sample_backends.BlockingEcho", (), "hi:pystrands-handler-"),
        ("tests.faces.sample_backends.AsyncEcho", ("--reactor=asyncio",), "hi:task"),
        ("tests.faces.sample_backends:app", (), "hi:pystrands-handler-"),
    ],
)
def test_twistd_runs_a_face_subclass(broker: FakeBroker, spec: str, options: tuple, reply: str) -> None:
    process = run_twistd(broker, spec, *options)
    try:
        conn = broker.accept(timeout=20)
        assert accept_client(conn, url="/ws/lobby")["room_id"] == "/ws/lobby"
        conn.send_frame(event("new_message", nested_context("a", "lobby", {}), message="hi"))
        params = conn.recv_frame(10)["params"]
        assert params["room_id"] == "lobby" and params["message"].startswith(reply), params
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    conn.wait_closed(5)


def test_twistd_concurrency_is_the_blocking_faces_handler_threads(broker: FakeBroker) -> None:
    """``--concurrency 3``: the dispatcher admits three clients' events, and three threads run them at once."""
    process = run_twistd(broker, "tests.faces.sample_backends.ThreeAtOnce",
                         backend_options=("--concurrency", "3"))
    try:
        conn = broker.accept(timeout=20)
        for client in "abc":
            conn.send_frame(event("new_message", nested_context(client, "lobby", {}), message="hi"))
        replies = conn.recv_frames(3, 10)
        assert sorted((f["params"]["conn_id"], f["params"]["message"]) for f in replies) == [
            (client, "hi:together") for client in "abc"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert "Traceback" not in output, output


def test_twistd_refuses_an_asyncio_face_without_the_asyncio_reactor(broker: FakeBroker) -> None:
    process = run_twistd(broker, "tests.faces.sample_backends.AsyncEcho")
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    last = output.strip().splitlines()[-1]
    assert "--reactor=asyncio" in last and "Traceback" not in output, output

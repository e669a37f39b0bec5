"""The faces' log events reach stdlib logging, as the documented examples expect."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from pystrands import AsyncPyStrandsClient, PyStrandsClient
from pystrands.ratelimit import ThrottledWarning
from tests.support.fakebroker import FakeBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import logging, sys, threading
    from pystrands import PyStrandsClient

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    handled = threading.Event()

    class Failing(PyStrandsClient):
        def on_message(self, message, context):
            handled.set()
            raise ValueError("handler bug " + message)

    client = Failing(host="127.0.0.1", port=int(sys.argv[1]))
    assert client.connect()
    handled.wait(10)
    client.disconnect(timeout=2)
""")


def test_handler_failures_and_connection_events_reach_stdlib_logging() -> None:
    with FakeBroker() as broker:
        process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(broker.port)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            conn = broker.accept(timeout=20)
            conn.send_frame({"request_id": "m", "action": "new_message", "params": {
                "message": "#7", "context": {"client_id": "c", "room_id": "r", "metadata": {}}}})
            output, _ = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, output
    assert "INFO pystrands.protocol Connected to the broker" in output
    assert "ERROR pystrands.dispatch Backend handler Failing.on_message failed" in output
    assert "ValueError: handler bug #7" in output


BEFORE_CONNECT = textwrap.dedent("""
    import asyncio, logging, sys
    from pystrands import AsyncPyStrandsClient, PyStrands, PyStrandsClient

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    kind = sys.argv[1]
    if kind == "blocking":
        assert PyStrandsClient("127.0.0.1", 1).broadcast_message("early").result() is False
    elif kind == "asyncio":
        async def main():
            assert await AsyncPyStrandsClient("127.0.0.1", 1).broadcast_message("early") is False
        asyncio.run(main())
    else:
        assert PyStrands("127.0.0.1", 1).broadcast("early").result() is False
""")


@pytest.mark.parametrize("kind", ["blocking", "asyncio", "app"])
def test_a_send_dropped_before_the_first_connect_warns_through_stdlib_logging(kind: str) -> None:
    output = subprocess.run([sys.executable, "-c", BEFORE_CONNECT, kind], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "WARNING pystrands._dropped A send to the broker was dropped" in output, output


def test_a_throttled_warning_tells_the_count_it_holds_when_flushed() -> None:
    clock = Clock()
    logged: list[dict[str, Any]] = []
    warn = ThrottledWarning(Logger(observer=logged.append), clock, "lost {what}",
                            held_format="{held_back} more lost ({what})")
    warn.flush()
    assert logged == [], "nothing held back: nothing to tell"
    for what in ("a", "b", "c"):
        warn(what=what)
    assert warn.held_back == 2
    warn.flush()
    warn.flush()
    assert [(formatEvent(event), event["log_level"]) for event in logged] == [
        ("lost a", LogLevel.warn), ("2 more lost (c)", LogLevel.warn)]
    clock.advance(0.5)
    warn(what="d")
    assert warn.held_back == 1, "the interval runs from the last warning, not from the flush"


@pytest.mark.parametrize("face", ["blocking", "asyncio"])
def test_dropped_sends_left_at_disconnect_are_counted_then(caplog: pytest.LogCaptureFixture, face: str) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", 1)
        for _ in range(4):
            assert await client.broadcast_message("into the void") is False
        await client.disconnect()

    with caplog.at_level(logging.WARNING):
        if face == "asyncio":
            asyncio.run(body())
        else:
            blocking = PyStrandsClient("127.0.0.1", 1)
            for _ in range(4):
                assert blocking.broadcast_message("into the void").result() is False
            blocking.disconnect()
    dropped = [r.getMessage() for r in caplog.records if r.name == "pystrands._dropped"]
    assert len(dropped) == 2 and dropped[0].startswith("A send to the broker was dropped"), dropped
    assert dropped[1].startswith("3 more send(s) to the broker dropped since the last warning"), dropped


UNCONFIGURED = textwrap.dedent("""
    from pystrands import PyStrandsClient

    assert PyStrandsClient("127.0.0.1", 1).broadcast_message("early").result() is False
""")


def test_a_program_that_configures_no_logging_still_sees_a_warning_once_on_stderr() -> None:
    """Python's last-resort handler prints it: the only place a plain program's warning can appear."""
    result = subprocess.run([sys.executable, "-c", UNCONFIGURED], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stderr.count("A send to the broker was dropped") == 1, result.stderr


def test_under_twistd_a_faces_warning_is_one_line_at_its_level(free_port: int) -> None:
    """twistd logged each warning twice: as ``#warn``, and as ``[stderr#error]`` from the last resort (review F12)."""
    process = subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "--logfile=-", "pystrands",
         "--backend", "tests.faces.sample_backends.BlockingEcho", "--broker", f"tcp:host=127.0.0.1:port={free_port}",
         "--no-reconnect"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the single attempt fails: "... failed (...); not retrying (...)"
            lines.append(line)
            if "not retrying" in line:
                break
    finally:
        process.terminate()
        process.wait(20)
    output = "".join(lines) + process.stdout.read()  # the rest: read() starts with what the loop buffered
    failed = [line for line in output.splitlines() if "Connecting to the broker at" in line]
    assert len(failed) == 1 and "[pystrands.protocol#warn]" in failed[0], output
    assert "stderr" not in output, output

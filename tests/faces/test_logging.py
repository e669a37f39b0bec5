"""The faces' log events reach stdlib logging, as the documented examples expect."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

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

"""The public pystrands 1.0.0 clients, unchanged, as backends of the embedded broker.

They run from the benchmark venv (benchmarks/run.py setup installs the
package from the index); without it the test skips and says why.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest

from .conftest import TIMEOUT, RunningBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]
PUBLIC_PYTHON = ROOT / "benchmarks" / ".venv-public" / "bin" / "python"

BACKENDS = {
    "PyStrandsClient": """
        import sys
        from pystrands import PyStrandsClient

        class Chat(PyStrandsClient):
            def on_connection_request(self, request):
                _, _, room, user = request.url.split("/")
                request.context.room_id = room
                request.context.metadata = {"user": user}
                return user != "mallory"

            def on_new_connection(self, context):
                self.send_room_message(context.room_id, "joined:" + context.metadata["user"])

            def on_message(self, message, context):
                self.send_room_message(context.room_id, context.metadata["user"] + ":" + message)

        Chat(host="127.0.0.1", port=int(sys.argv[1])).run_forever()
    """,
    "AsyncPyStrandsClient": """
        import asyncio, sys
        from pystrands import AsyncPyStrandsClient

        class Chat(AsyncPyStrandsClient):
            async def on_connection_request(self, request):
                _, _, room, user = request.url.split("/")
                request.context.room_id = room
                request.context.metadata = {"user": user}
                return user != "mallory"

            async def on_new_connection(self, context):
                await self.send_room_message(context.room_id, "joined:" + context.metadata["user"])

            async def on_message(self, message, context):
                await self.send_room_message(context.room_id, context.metadata["user"] + ":" + message)

        asyncio.run(Chat(host="127.0.0.1", port=int(sys.argv[1])).run_forever())
    """,
}


@pytest.fixture(scope="module")
def public_python() -> pathlib.Path:
    setup = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "setup", "--quick"],
                           capture_output=True, text=True, timeout=300)
    if setup.returncode != 0 or not PUBLIC_PYTHON.exists():
        pytest.skip(f"the public pystrands venv could not be made: {setup.stdout[-300:]}{setup.stderr[-300:]}")
    return PUBLIC_PYTHON


@pytest.fixture(params=sorted(BACKENDS))
def public_backend(request: Any, public_python: pathlib.Path, broker: RunningBroker) -> Iterator[None]:
    before = broker.thread.call(lambda: len(broker.broker.backends))
    process = subprocess.Popen([str(public_python), "-c", textwrap.dedent(BACKENDS[request.param]),
                                str(broker.tcp_port)], cwd="/", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        broker.thread.wait_for(lambda: len(broker.broker.backends) > before, "the public client to connect",
                               timeout=20)
        yield
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert "Traceback" not in output, output


def test_public_clients_chat_through_the_embedded_broker(broker: RunningBroker, public_backend: None) -> None:
    alice = broker.open("/ws/lobby/alice").result(TIMEOUT)
    assert alice.recv(timeout=TIMEOUT) == "joined:alice"
    bob = broker.open("/ws/lobby/bob").result(TIMEOUT)
    assert alice.recv(timeout=TIMEOUT) == "joined:bob"
    assert bob.recv(timeout=TIMEOUT) == "joined:bob"
    alice.send("hi")
    assert alice.recv(timeout=TIMEOUT) == "alice:hi"
    assert bob.recv(timeout=TIMEOUT) == "alice:hi", "plain metadata reaches the public client as it stored it"
    with pytest.raises(Exception) as refused:
        broker.open("/ws/lobby/mallory").result(TIMEOUT)
    assert "403" in str(refused.value)

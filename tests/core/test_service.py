"""BackendService inside a service tree, the Twisted web app example, and import hygiene."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import MultiService

from pystrands import BackendService
from tests.core.harness import FAST, Recorder, in_thread
from tests.support.fakebroker import FakeBroker
from tests.support.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest_twisted.ensureDeferred
async def test_service_in_a_multiservice_connects_serves_and_stops(reactor: Any) -> None:
    backend = Recorder(reactor)
    with FakeBroker() as broker:
        parent = MultiService()
        service = BackendService(backend, f"tcp:host=127.0.0.1:port={broker.port}", reactor=reactor,
                                 stop_timeout=2, **FAST)
        service.setServiceParent(parent)
        assert service.broker is None
        parent.startService()
        conn = await in_thread(broker.accept)
        assert backend.broker is service.broker
        assert service.broker.destination == f"tcp:host=127.0.0.1:port={broker.port}", "logs name the endpoint"
        conn.send_frame({"request_id": "m", "action": "new_message", "params": {
            "message": "hi", "context": {"client_id": "c", "room_id": "r", "metadata": {}}}})
        assert (await backend.next_event())[1][0] == "hi"
        await service.broker.send_room_message("r", "back")
        assert (await in_thread(conn.recv_frame))["params"] == {"room_id": "r", "message": "back"}
        await parent.stopService()
        await in_thread(conn.wait_closed, 2)
        assert not service.running


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"backend": object()}, "is not a backend"),
        ({"endpoint": 8081}, "endpoint must be an endpoint string"),
        ({"endpoint": "bogus:thing"}, "Unknown endpoint type"),
        ({"stop_timeout": -1}, "stop_timeout must be"),
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"reconnect_delay": "1"}, "reconnect_delay must be a number"),
        ({"max_reconnect_delay": 0.5, "reconnect_delay": 1}, "max_reconnect_delay"),
        ({"auto_reconnect": "yes"}, "auto_reconnect must be a bool"),
        ({"backend_token": 5}, "backend_token must be a str"),
        ({"backend_token": ""}, "backend_token must not be empty"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_service_refuses_bad_arguments_naming_them(kwargs: dict[str, Any], error: str) -> None:
    from pystrands import Backend

    arguments = {"backend": Backend(), **kwargs}
    with pytest.raises((TypeError, ValueError), match=error):
        BackendService(**arguments)


def test_importing_the_library_is_silent_and_leaves_the_reactor_alone() -> None:
    code = (
        "import logging, pkgutil, importlib, sys, pystrands\n"
        "for info in pkgutil.walk_packages(pystrands.__path__, 'pystrands.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'a module imported the global reactor'\n"
        "assert not logging.getLogger().handlers, 'a module installed a logging handler'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""



def test_twisted_app_example_sends_to_a_room_from_a_web_request() -> None:
    http_port = free_port()
    with FakeBroker() as broker:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.twisted_app", "--http", f"tcp:{http_port}:interface=127.0.0.1",
             "--broker", f"tcp:host=127.0.0.1:port={broker.port}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            conn = broker.accept(timeout=20)
            conn.send_frame({"request_id": "r1", "action": "connection_request",
                             "params": {"headers": {}, "url": "/ws/kitchen", "remote_addr": "127.0.0.1:1"}})
            assert conn.recv_frame()["params"]["room_id"] == "kitchen"
            deadline = time.monotonic() + 10
            while True:
                try:
                    reply = urllib.request.urlopen(
                        urllib.request.Request(f"http://127.0.0.1:{http_port}/rooms/kitchen", data=b"dinner!"),
                        timeout=5)
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert reply.read() == b"sent\n"
            assert conn.recv_frame()["params"] == {"room_id": "kitchen", "message": "dinner!"}
        finally:
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=20)
        assert "Traceback" not in output, output

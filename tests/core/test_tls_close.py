"""Stopping a backend connected over TLS ends within its bound (review F19), with real sockets.

A TLS close waits for the broker's close_notify: the backend's stop used to
wait for ever while its reading was paused. Now it reads during the close
(a broker that answers: a clean close) and aborts a close that takes
CLOSE_TIMEOUT seconds (a peer that never answers).
"""

from __future__ import annotations

import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent

from pystrands import BackendService
from pystrands.protocol import CLOSE_TIMEOUT
from tests.core.harness import FAST, Recorder
from tests.reliability.test_hostile_clients import self_signed
from tests.support.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = str(pathlib.Path(sys.executable).parent / "twistd")
HOST = "127.0.0.1"


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(key.pem, cert.pem, a folder trusting only cert.pem) for 127.0.0.1."""
    return self_signed(tmp_path)


@pytest.fixture
def silent_tls_peer(certificate: tuple[pathlib.Path, ...]) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes the handshake, sends one event, then never reads: its port."""
    key, cert, _ = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server((HOST, 0))
    done = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as conn:
            conn.sendall(b'{"request_id": "m", "action": "new_message", "params": {"message": "hi",'
                         b' "context": {"client_id": "c", "room_id": "r", "metadata": {}}}}\n')
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    done.set()
    listener.close()
    thread.join(5)


@pytest_twisted.ensureDeferred
async def test_a_tls_close_the_peer_never_answers_is_aborted_after_close_timeout(
        reactor: Any, certificate: tuple[pathlib.Path, ...], silent_tls_peer: int,
        logged: list[dict[str, Any]]) -> None:
    trusted = certificate[2]
    backend = Recorder(reactor)
    service = BackendService(backend, f"tls:host={HOST}:port={silent_tls_peer}:trustRoots={trusted}",
                             reactor=reactor, stop_timeout=0.5, **FAST)
    service.startService()
    assert (await backend.next_event(10))[0] == "on_message"  # the handshake is done, the connection serves
    began = reactor.seconds()
    await service.stopService().addTimeout(CLOSE_TIMEOUT + 10, reactor)
    took = reactor.seconds() - began
    assert CLOSE_TIMEOUT - 0.1 < took < CLOSE_TIMEOUT + 2, took
    warnings = [formatEvent(event) for event in logged if event.get("log_level") is LogLevel.warn]
    assert any(f"did not complete its close within {CLOSE_TIMEOUT:g}s" in line for line in warnings), warnings


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    """The process's output lines up to the first one containing ``text``; AssertionError after ``timeout``."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), "".join(seen)
    return seen


def test_twistd_over_tls_exits_on_sigterm_within_its_stop_timeout(
        certificate: tuple[pathlib.Path, ...]) -> None:
    """`twistd pystrands --broker tls:...` against a real broker: SIGTERM, a clean close, the process gone."""
    key, cert, trusted = certificate
    ws_port, tcp_port = free_port(), free_port()
    broker = subprocess.Popen(
        [sys.executable, "-m", "pystrands", "server", "--ws-endpoint", f"tcp:{ws_port}:interface={HOST}",
         "--tcp-endpoint", f"ssl:{tcp_port}:interface={HOST}:privateKey={key}:certKey={cert}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backend = None
    try:
        backend = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "pystrands", "--backend", "tests.core.sample_backends.Echo",
             "--broker", f"tls:host={HOST}:port={tcp_port}:trustRoots={trusted}", "--reconnect-delay", "0.1",
             "--stop-timeout", "1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before = wait_for_line(backend, "supports", timeout=30)  # the broker's hello: TLS is up
        began = time.monotonic()
        backend.send_signal(signal.SIGTERM)
        backend.wait(1 + CLOSE_TIMEOUT + 10)
        took = time.monotonic() - began
        assert backend.stdout is not None
        output = "".join(before) + backend.stdout.read()
        assert took < 1 + CLOSE_TIMEOUT + 3, output
        assert "Server Shut Down" in output and "Traceback" not in output, output
        assert "aborted it" not in output, "the broker answered the close: no abort needed"
    finally:
        for process in (backend, broker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)

"""Hostile input to a backend's protocol, fuzzed with hypothesis, over real TCP.

One `twistd pystrands` process serves a whole module: every example throws
bytes at it, then a ping frame that must come back echoed on the same
connection. Nothing may crash, reconnect, or grow without bound.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import signal
import subprocess
import sys
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import transcript
from tests.support.fakebroker import BackendConnection, FakeBroker

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_LINE = 4096
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
pings = itertools.count()


class Backend:
    """A twistd backend process and the fake broker's end of its connection."""

    def __init__(self, log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self.broker = FakeBroker()
        self.process = subprocess.Popen(
            [str(pathlib.Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", f"--logfile={log_path}",
             "pystrands", "--backend", "tests.core.sample_backends.Echo", "--max-line-length", str(MAX_LINE),
             "--broker", f"tcp:host=127.0.0.1:port={self.broker.port}"],
            cwd=ROOT)
        self.conn: BackendConnection = self.broker.accept(timeout=20)

    def rss_kib(self) -> int:
        status = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])

    def assert_alive_after(self, data: bytes) -> None:
        """Send ``data``, end any partial line, then prove the backend still answers."""
        token = f"ping-{next(pings)}"
        self.conn.send_raw(data + b"\n")
        self.conn.send_frame({"request_id": token, "action": "new_message", "params": {
            "message": token, "context": {"client_id": "fuzz", "room_id": "r", "metadata": {"via": "ok"}}}})
        for _ in range(1000):
            frame = self.conn.recv_frame(timeout=10)
            if frame["action"] == "message_to_room" and frame["params"]["message"] == f"echo:{token}:ok":
                return
        raise AssertionError("the ping was never echoed")

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.broker.close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    running = Backend(tmp_path_factory.mktemp("fuzz") / "backend.log")
    yield running
    assert running.process.poll() is None, "the backend process died"
    assert len(running.broker.connections) == 1, "the backend reconnected: a connection was dropped"
    running.close()
    log = running.log_path.read_text()
    assert "could not be handled" not in log and "Unhandled Error" not in log, log[-3000:]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
actions = st.sampled_from(["connection_request", "new_connection", "new_message", "disconnected", "error",
                           "heartbeat", "response", "auth", ""]) | st.text(max_size=10)
broker_frames = [json.dumps(frame).encode() for frame in transcript.frames("broker")]


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(backend: Backend, data: bytes) -> None:
    backend.assert_alive_after(data)


@FUZZ
@given(st.fixed_dictionaries({"request_id": json_values, "action": actions, "params": json_values}))
def test_wrong_json_types_in_the_envelope(backend: Backend, frame: dict[str, Any]) -> None:
    backend.assert_alive_after(json.dumps(frame).encode())


@FUZZ
@given(st.sampled_from(["connection_request", "new_connection", "new_message", "disconnected", "error"]),
       st.dictionaries(st.sampled_from(["message", "context", "error", "headers", "url", "remote_addr", "query"]),
                       json_values, max_size=5),
       st.one_of(json_values, st.fixed_dictionaries({"client_id": json_values, "room_id": json_values,
                                                     "metadata": json_values})))
def test_wrong_json_types_in_every_param(backend: Backend, action: str, params: dict[str, Any],
                                         context: Any) -> None:
    params.setdefault("context", context)
    backend.assert_alive_after(json.dumps({"request_id": "f", "action": action, "params": params}).encode())


@FUZZ
@given(st.sampled_from(broker_frames), st.data())
def test_truncated_transcript_frames(backend: Backend, frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    backend.assert_alive_after(frame[:cut])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=MAX_LINE + 1, max_value=MAX_LINE * 64), st.booleans())
def test_oversized_lines(backend: Backend, size: int, valid_json: bool) -> None:
    body = json.dumps({"request_id": "big", "action": "new_message", "params": {"message": "x" * size}})
    backend.assert_alive_after(body.encode() if valid_json else b"z" * size)


def test_memory_stays_bounded_under_a_stream_of_garbage(backend: Backend) -> None:
    backend.assert_alive_after(b"warm-up")
    before = backend.rss_kib()
    junk = b"{\"action\": 5}\n" * 2000 + b"x" * (MAX_LINE * 2) + b"\n"
    for _ in range(50):
        backend.conn.send_raw(junk)
    backend.assert_alive_after(b"")
    growth = backend.rss_kib() - before
    assert growth < 20_000, f"resident memory grew by {growth} KiB after 5 MB of garbage"

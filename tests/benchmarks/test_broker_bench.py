"""The broker benchmark (``run.py broker``, issue 16): frame code, bad input, child processes, quick form.

The frame reader is what every figure of the benchmark is counted with, so
it is checked against ``websockets``' own frame writer, byte for byte and
split at every position.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import processes  # noqa: E402  (benchmarks/ is not a package)
import wsload  # noqa: E402


def parsed_by_websockets(data: bytes, mask: bool) -> Frame:
    """The one frame in ``data`` as websockets' parser reads it."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_client_frames_are_what_websockets_reads(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = parsed_by_websockets(wsload.client_frame(payload, b"\x01\x02\x03\x04"), mask=True)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
    frame = parsed_by_websockets(wsload.server_frame(payload), mask=False)
    assert (frame.opcode, frame.data) == (Opcode.TEXT, payload)


@pytest.mark.parametrize("masked", [True, False])
def test_frames_reads_whole_frames_only_at_any_split(masked: bool) -> None:
    payloads = [b"a" * 10, b"b" * 200, b"c" * 70_000]
    wire = b"".join(wsload.client_frame(p, b"\x09\x08\x07\x06") if masked else wsload.server_frame(p)
                    for p in payloads)
    ends = [len(b"".join(wsload.client_frame(p, b"\x09\x08\x07\x06") if masked else wsload.server_frame(p)
                         for p in payloads[:n])) for n in range(1, 4)]
    for cut in [0, 1, 2, 5, ends[0] - 1, ends[0], ends[0] + 3, ends[1] + 9, len(wire) - 1, len(wire)]:
        found, used = wsload.frames(bytearray(wire[:cut]), masked)
        complete = sum(1 for end in ends if end <= cut)
        assert found == [(1, p) for p in payloads[:complete]]
        assert used == (ends[complete - 1] if complete else 0)


def test_load_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scenario must be one of"):
        wsload.load("ws://127.0.0.1:1/ws/x", "storm", 10, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        wsload.load("ws://127.0.0.1:1/ws/x", "echo", 0, 1.0)


def test_load_fails_clearly_when_nothing_listens() -> None:
    with pytest.raises(RuntimeError, match="did not connect its clients"):
        wsload.load("ws://127.0.0.1:1/ws/x", "echo", 2, 0.2, timeout=10)


def test_quick_form_prints_a_figure_for_every_scenario_on_both_servers() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "broker", "--quick", "--no-public"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()
            if line.startswith(("echo,", "room,", "flood,"))}
    assert len(rows) == 3, done.stdout
    for line in rows.values():
        cells = line.split()
        ratio = cells[-1]
        assert ratio.endswith("x") and float(ratio[:-1]) > 0, line
        assert "-" not in cells[cells.index("clients") + 1:], line


@pytest.mark.parametrize("urls", [[], ["http://127.0.0.1:1/ws/x"], ["ws://127.0.0.1/ws/x"], ["ws:///ws/x"]])
def test_load_refuses_bad_urls(urls: list[str]) -> None:
    with pytest.raises(ValueError, match="URL"):
        wsload.load(urls, "echo", 2, 1.0)


def test_clients_of_a_room_alternate_between_the_urls() -> None:
    """Two ceiling servers, each its own rooms: 20 clients in 10 rooms split over both get only their own
    messages back (one delivered per round trip); on one server, each message reaches both members (two)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(2):
            port = processes.free_port()
            stack.enter_context(processes.process("ceiling", [sys.executable, str(BENCH / "wsload.py"), "serve",
                                                              "--port", str(port)]))
            processes.wait_listening(port)
            ports.append(port)
        urls = [f"ws://127.0.0.1:{port}/ws/bench?room=r{{room}}" for port in ports]
        split = wsload.load(urls, "room", 20, 0.3, rooms=10, warmup=0.1, timeout=20)
        joined = wsload.load(urls[:1], "room", 20, 0.3, rooms=10, warmup=0.1, timeout=20)
    assert split["delivered"] / split["round_trips"] < 1.2, split
    assert joined["delivered"] / joined["round_trips"] > 1.8, joined


def test_a_failure_while_a_child_runs_quotes_its_output_and_the_child_is_killed() -> None:
    printer = [sys.executable, "-c", "print('started')"]
    quoted = r"^printer: boom\n  printer, its last output:\n    \| started$"
    with pytest.raises(processes.ChildFailed, match=quoted), processes.process("printer", printer) as child:
        child.wait(20)
        raise OSError("boom")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(processes.ChildFailed, match=r"^sleeper: boom$"), processes.process("sleeper", sleeper) as child:
        raise ValueError("boom")
    assert child.returncode == -signal.SIGKILL

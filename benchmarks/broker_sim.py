"""A broker simulator: floods one connected backend with new_message frames and counts replies.

It speaks the real wire protocol (newline-delimited JSON over TCP on
127.0.0.1) but does no JSON work of its own: frames are encoded once and
written in large blocks, and replies are counted with ``bytes.count``, so that
one process can feed a backend far faster than any Python backend answers
(``run.py`` shows that ceiling with a raw-socket echo backend). Used by
``run.py``; nothing here starts processes.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from dataclasses import dataclass

REPLY_ACTION = b'"message_to_connection"'
#: Frames per write block, at least; a block is also at least this many bytes.
BLOCK_BYTES = 64 * 1024
#: Bytes of replies read at most per ``recv_into``, into one buffer made per run: a read allocates nothing,
#: so what it costs does not depend on what ran before in this process (a fresh 1 MiB ``bytes`` per read
#: made the simulator's cost, and with it the public asyncio client's rate, depend on the benchmarks run
#: before it: glibc maps such blocks, or not, by a threshold that earlier frees move).
READ_SIZE = 1 << 20


class SimulatorError(Exception):
    """The backend misbehaved (closed, timed out, or answered with the wrong frame)."""


def new_message_frame(message: str, client_id: str, request_id: str) -> bytes:
    """A ``new_message`` frame as the reference broker writes it (nested metadata quirk included)."""
    context = {
        "client_id": client_id,
        "room_id": "/ws/bench",
        "metadata": {"accepted": True, "client_id": client_id, "room_id": "/ws/bench", "metadata": {}},
    }
    frame = {"request_id": request_id, "action": "new_message", "params": {"message": message, "context": context}}
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def client_frames(message_size: int, clients: int) -> list[bytes]:
    """One frame per simulated WebSocket client, each with a message of ``message_size`` bytes."""
    message = "x" * message_size
    return [new_message_frame(message, f"client-{i}", f"req-{i}") for i in range(clients)]


@dataclass
class FloodResult:
    """What one flood measured: replies counted, wall seconds, and the simulator's CPU seconds."""

    frames: int
    replies: int
    seconds: float
    sim_cpu_seconds: float


class ReplyCounter:
    """Counts reply lines in a byte stream, and checks that each is a message_to_connection."""

    def __init__(self) -> None:
        self.lines = 0
        self.actions = 0
        self._tail = b""

    def feed(self, buffer: bytearray, size: int) -> None:
        """Count newlines and reply actions in ``buffer[:size]``, including an action split across chunks."""
        self.lines += buffer.count(b"\n", 0, size)
        self.actions += buffer.count(REPLY_ACTION, 0, size)
        edge = len(REPLY_ACTION) - 1
        head = bytes(buffer[:min(edge, size)])
        self.actions += (self._tail + head).count(REPLY_ACTION)
        self._tail = bytes(buffer[size - edge:size]) if size >= edge else (self._tail + head)[-edge:]

    def check(self) -> None:
        """Raise SimulatorError if some reply line was not a message_to_connection frame."""
        if self.actions != self.lines:
            raise SimulatorError(
                f"{self.lines} reply lines but {self.actions} message_to_connection frames")


def _blocks(frames: list[bytes], count: int) -> list[tuple[bytes, int]]:
    """(block, repeat) pairs that together write ``count`` frames cycling through ``frames``."""
    per_block = len(frames)
    while per_block < count and per_block * min(len(f) for f in frames) < BLOCK_BYTES:
        per_block += len(frames)
    per_block = min(per_block, count)
    block = b"".join(frames[i % len(frames)] for i in range(per_block))
    full, rest = divmod(count, per_block)
    blocks = [(block, full)]
    if rest:
        blocks.append((b"".join(frames[i % len(frames)] for i in range(rest)), 1))
    return blocks


def flood(sock: socket.socket, frames: list[bytes], count: int, timeout: float) -> FloodResult:
    """Write ``count`` frames as fast as the backend reads them, until all replies are in.

    Replies are read concurrently with the writes (one selector loop), so a
    backend that answers while it reads is never blocked by the simulator.
    Stops with what it has after ``timeout`` seconds (``replies < frames``).
    """
    sock.setblocking(False)
    counter = ReplyCounter()
    buffer = bytearray(READ_SIZE)
    pending = [(memoryview(block), repeat) for block, repeat in _blocks(frames, count)]
    view, repeat = pending.pop(0)
    offset = 0
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + timeout
    try:
        while counter.lines < count:
            now = time.perf_counter()
            if now >= deadline:
                break
            for _key, events in selector.select(min(1.0, deadline - now)):
                if events & selectors.EVENT_READ:
                    size = sock.recv_into(buffer)
                    if not size:
                        raise SimulatorError(f"backend closed the connection after {counter.lines} replies")
                    counter.feed(buffer, size)
                if events & selectors.EVENT_WRITE and view is not None:
                    try:
                        offset += sock.send(view[offset:])
                    except BlockingIOError:
                        continue
                    if offset == len(view):
                        offset = 0
                        repeat -= 1
                        if repeat == 0:
                            view, repeat = pending.pop(0) if pending else (None, 0)
                            if view is None:
                                selector.modify(sock, selectors.EVENT_READ)
    finally:
        selector.close()
        sock.setblocking(True)
    seconds = time.perf_counter() - start
    counter.check()
    return FloodResult(count, counter.lines, seconds, time.process_time() - cpu_start)


def ping_pong(sock: socket.socket, frame: bytes, count: int, timeout: float) -> list[float]:
    """Round-trip seconds of ``count`` frames sent one at a time, each after the previous reply."""
    sock.settimeout(timeout)
    counter = ReplyCounter()
    buffer = bytearray(READ_SIZE)
    times = []
    deadline = time.perf_counter() + timeout
    for _ in range(count):
        start = time.perf_counter()
        if start > deadline:
            raise SimulatorError(f"ping-pong took more than {timeout}s ({len(times)} of {count} done)")
        sock.sendall(frame)
        expected = counter.lines + 1
        while counter.lines < expected:
            size = sock.recv_into(buffer)
            if not size:
                raise SimulatorError(f"backend closed the connection after {len(times)} round trips")
            counter.feed(buffer, size)
        times.append(time.perf_counter() - start)
    counter.check()
    return times


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]

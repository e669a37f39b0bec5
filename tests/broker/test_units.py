"""Sans-I/O pieces of the broker: the line splitter, the message size guard, the queue."""

from __future__ import annotations

import os
import time

from hypothesis import given
from hypothesis import strategies as st

from pystrands.lines import LineSplitter
from pystrands.broker.queue import EventQueue
from pystrands.broker.websocket import MessageSizeGuard


def split_all(chunks: list[bytes], max_length: int = 1 << 30) -> tuple[list[bytes], list[bytes]]:
    overflows: list[bytes] = []
    splitter = LineSplitter(max_length, overflows.append)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines, overflows


@given(st.lists(st.text(alphabet="ab\r\n", max_size=40).map(str.encode), max_size=12))
def test_any_chunking_gives_the_lines_of_the_whole_stream(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    complete = stream[:stream.rfind(b"\n") + 1]
    expected = [line.removesuffix(b"\r") for line in complete.split(b"\n")[:-1]]
    assert split_all(chunks)[0] == [line for line in expected if line]


def test_long_lines_are_reported_and_skipped_to_their_newline() -> None:
    lines, overflows = split_all([b"ok\n" + b"x" * 30, b"x" * 30, b"x" * 30 + b"\nnext\n", b"y" * 99 + b"\n"],
                                 max_length=50)
    assert lines == [b"ok", b"next"]
    assert overflows == [b"x" * 30, b"y" * 99]


def test_splitting_is_linear_in_the_line_size() -> None:
    chunk = b"z" * 4096
    start = time.perf_counter()
    lines, _ = split_all([chunk] * 4096 + [b"\n"])  # one 16 MiB line in 4 KiB reads
    assert time.perf_counter() - start < 1.0
    assert len(lines[0]) == 16 * 1024 * 1024


def frame(payload_length: int, opcode: int = 1, final: bool = True, masked: bool = True) -> bytes:
    """A WebSocket frame as a client sends it (payload bytes are arbitrary)."""
    first = (0x80 if final else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if payload_length < 126:
        header = bytes([first, mask_bit | payload_length])
    elif payload_length < 65536:
        header = bytes([first, mask_bit | 126]) + payload_length.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + payload_length.to_bytes(8, "big")
    return header + (os.urandom(4) if masked else b"") + b"p" * payload_length


def test_messages_within_the_limit_pass_whole() -> None:
    stream = frame(1000) + frame(70000, opcode=2) + frame(10, final=False) + frame(9, opcode=9) + frame(990, opcode=0)
    guard = MessageSizeGuard(70000)
    assert guard.accept(stream) == len(stream) and not guard.exceeded


def test_the_frame_that_exceeds_is_cut_before_its_header() -> None:
    first, second = frame(600, final=False), frame(600, opcode=0)
    guard = MessageSizeGuard(1000)
    assert guard.accept(first + second) == len(first)
    assert guard.exceeded
    assert guard.accept(b"more") == 0


def test_a_huge_announced_length_is_refused_before_any_payload() -> None:
    header = bytes([0x82, 0xFF]) + (2 ** 40).to_bytes(8, "big") + os.urandom(4)
    guard = MessageSizeGuard(1024)
    assert guard.accept(header) == 0 and guard.exceeded


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30))
def test_byte_boundaries_do_not_matter(cuts: list[int]) -> None:
    stream = frame(5) + frame(300, final=False) + frame(0, opcode=10) + frame(70000, opcode=0)
    whole = MessageSizeGuard(70305)
    assert whole.accept(stream) == len(stream)
    pieces, position = [], 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        pieces.append(stream[position:position + cut * 997])
        position += cut * 997
    guard = MessageSizeGuard(70305)
    assert sum(guard.accept(piece) for piece in pieces if piece) == len(stream)
    assert not guard.exceeded


def test_queue_drops_the_oldest_and_drains_in_order() -> None:
    queue: EventQueue[int] = EventQueue(3)
    for event in range(5):
        queue.put(event)
    assert (len(queue), queue.dropped) == (3, 2)
    assert list(queue.drain()) == [2, 3, 4]
    assert len(queue) == 0

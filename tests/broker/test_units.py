"""Sans-I/O pieces of the broker: the line splitter, the queue."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from pystrands.lines import LineSplitter
from pystrands.broker.queue import EventQueue


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


def test_queue_drops_the_oldest_and_drains_in_order() -> None:
    queue: EventQueue[int] = EventQueue(3)
    for event in range(5):
        queue.put(event)
    assert (len(queue), queue.dropped) == (3, 2)
    assert list(queue.drain()) == [2, 3, 4]
    assert len(queue) == 0

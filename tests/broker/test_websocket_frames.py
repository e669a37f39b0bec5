"""The broker's fast message reader (``simple_messages``) and its frame-boundary tracker, sans I/O.

``simple_messages`` must read exactly the messages websockets' own parser and
the broker's assembler read for the frames it takes, and take nothing else:
every other frame (text that is not UTF-8 included) is left to the protocol,
which enforces the rules. ``FrameBoundary`` must say "between two
frames" exactly at frame ends, whatever the reads' sizes.
"""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode

from pystrands.broker.guards import decode_message
from pystrands.broker.websocket import FrameBoundary, simple_messages


def masked(opcode: Opcode, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame as websockets serialises it (masked); ``rsv1`` sets the bit websockets will not."""
    frame = Frame(opcode, payload, fin=fin).serialize(mask=True)
    return bytes([frame[0] | 0x40]) + frame[1:] if rsv1 else frame


def test_whole_text_and_binary_frames_are_read_as_websockets_wrote_them() -> None:
    texts = [b"", "caf\u00e9 \U0001f600".encode() * 9, b"t" * 126, "\u00e9".encode() * 30000]
    binaries = [b"hi", os.urandom(125), os.urandom(126), os.urandom(65535)]
    frames = [(Opcode.TEXT, p) for p in texts] + [(Opcode.BINARY, p) for p in binaries]
    data = b"".join(masked(opcode, p) for opcode, p in frames)
    messages, used = simple_messages(data, 1 << 20)
    assert used == len(data)
    assert messages == [decode_message(p, opcode is Opcode.TEXT) for opcode, p in frames]


@pytest.mark.parametrize("other", [
    masked(Opcode.PING, b"ping"),
    masked(Opcode.CLOSE, b"\x03\xe8"),
    masked(Opcode.TEXT, b"first part", fin=False),
    masked(Opcode.CONT, b"rest"),
    masked(Opcode.TEXT, b"compressed?", rsv1=True),
    Frame(Opcode.TEXT, b"not masked").serialize(mask=False),
    masked(Opcode.TEXT, b"x" * 65536),  # a 64-bit length
    masked(Opcode.TEXT, b"x" * 101),  # over max_size below
    masked(Opcode.TEXT, b"ok\xff\xfe"),  # not UTF-8: the protocol's side closes with 1007
])
def test_everything_else_stops_the_fast_reader_and_is_left_to_the_protocol(other: bytes) -> None:
    first = masked(Opcode.TEXT, b"ok")
    messages, used = simple_messages(first + other + masked(Opcode.TEXT, b"after"), 100)
    assert messages == ["ok"] and used == len(first)


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 7, 10])
def test_an_incomplete_frame_is_left_to_the_protocol(cut: int) -> None:
    first, second = masked(Opcode.TEXT, b"ok"), masked(Opcode.TEXT, b"a" * 200)
    messages, used = simple_messages(first + second[:cut], 1000)
    assert messages == ["ok"] and used == len(first)


@pytest.mark.parametrize("size", [1, 2, 7, 100, 4096])
def test_the_boundary_is_clear_exactly_at_frame_ends_whatever_the_read_sizes(size: int) -> None:
    frames = [masked(Opcode.TEXT, b"a" * 10), masked(Opcode.PING, b""), masked(Opcode.BINARY, b"b" * 300),
              masked(Opcode.TEXT, b"c" * 70_000), Frame(Opcode.TEXT, b"unmasked").serialize(mask=False)]
    stream = b"".join(frames)
    ends = {sum(len(f) for f in frames[:n]) for n in range(len(frames) + 1)}
    boundary = FrameBoundary()
    for start in range(0, len(stream), size):
        boundary.feed(stream[start:start + size])
        fed = min(start + size, len(stream))
        assert boundary.clear is (fed in ends), fed

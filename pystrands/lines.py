"""Split a byte stream into newline-terminated lines in linear time, sans I/O.

Both ends of the wire use it: the backend's ``BrokerProtocol`` and the
embedded broker's backend connections. ``LineReceiver``'s own loop re-scans
and re-copies its buffer for each chunk and each line, which is quadratic
with the multi-MiB frames the protocol allows.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LineSplitter"]


class LineSplitter:
    """Feed bytes, get complete lines (no ``\\n``, no trailing ``\\r``, empty ones skipped).

    A line longer than ``max_length`` is never held whole: ``on_overflow``
    gets its first bytes and the rest is discarded up to the next newline.
    Each byte is copied a bounded number of times, whatever the line sizes.
    """

    def __init__(self, max_length: int, on_overflow: Callable[[bytes], None]) -> None:
        self.max_length = max_length
        self._on_overflow = on_overflow
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines that ``data`` completes, in order."""
        pieces = data.split(b"\n")
        rest = pieces.pop()
        if (pieces and not self._partial and not self._discarding and len(data) <= self.max_length
                and b"\r" not in data and b"" not in pieces):
            # The usual read: whole lines, none too long, empty or ending in \r: no per-line work.
            if rest:
                self._partial.append(rest)
                self._partial_size = len(rest)
            return pieces
        lines: list[bytes] = []
        if pieces:
            first = pieces[0]
            if self._discarding:
                self._discarding = False
                pieces = pieces[1:]
            elif self._partial:
                self._partial.append(first)
                pieces[0] = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
            for line in pieces:
                if len(line) > self.max_length:
                    self._on_overflow(line[:200])
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line:
                    lines.append(line)
        if rest and not self._discarding:
            self._partial.append(rest)
            self._partial_size += len(rest)
            if self._partial_size > self.max_length:
                self._on_overflow(self._partial[0][:200])
                self._partial = []
                self._partial_size = 0
                self._discarding = True
        return lines

"""The limits a WebSocket client meets at the broker's door, sans I/O.

Each piece is a small object with no sockets, so each rule is tested on its
own with a ``Clock``: which origins may open a WebSocket, how many sockets an
address may hold, how fast a client may send, and how a fragmented message
is put back together (in linear time, with a cap on its fragments).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import cast
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from websockets.frames import Frame, Opcode

__all__ = ["AddressSlots", "MessageAssembler", "OriginPolicy", "TokenBucket", "TooManyFragments", "decode_message"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_PATTERN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>(\*\.)?[^/:*\s]+|\[[0-9a-f:.]+\])"
                      r"(:(?P<port>\d{1,5}|\*))?/?")


class OriginPolicy:
    """Which ``Origin`` may open a WebSocket (cross-site WebSocket hijacking defence).

    ``patterns`` None: only the page's own origin (its host and port equal
    the request's ``Host``). Otherwise each pattern is ``*`` (any origin but
    ``null``), ``null``, or ``scheme://host[:port]`` where host may start
    with ``*.`` (any subdomain) and port may be ``*``. A request without
    ``Origin`` does not come from a browser page and is always allowed.
    """

    def __init__(self, patterns: Iterable[str] | None = None) -> None:
        self.same_origin_only = patterns is None
        self._any = False
        self._null = False
        self._rules: list[tuple[str, str, str | None]] = []
        for pattern in patterns or ():
            self._add(pattern)

    def _add(self, pattern: object) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"allowed_origins must hold strings, not {type(pattern).__name__}")
        text = pattern.strip().lower()
        if text == "*":
            self._any = True
            return
        if text == "null":
            self._null = True
            return
        match = _PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"allowed_origins {pattern!r} is not an origin pattern"
                             " (scheme://host[:port], *.host for subdomains, *, or null)")
        port = match["port"] or str(_DEFAULT_PORTS.get(match["scheme"], ""))
        self._rules.append((match["scheme"], match["host"], port if port != "*" else None))

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header, sent to this ``Host``, may go on."""
        if origin is None:
            return True
        text = origin.strip().lower()
        if text == "null":
            return self._null
        parsed = _split_origin(text)
        if parsed is None:
            return False
        scheme, origin_host, origin_port = parsed
        if self.same_origin_only:
            own = _split_host(host or "", scheme)
            return own == (origin_host, origin_port)
        if self._any:
            return True
        return any(scheme == rule_scheme and _host_matches(rule_host, origin_host)
                   and (rule_port is None or rule_port == origin_port)
                   for rule_scheme, rule_host, rule_port in self._rules)


def _split_origin(origin: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) of a serialized origin, the port filled in from the scheme."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, host, str(port if port is not None else _DEFAULT_PORTS.get(parts.scheme, ""))


def _split_host(host: str, scheme: str) -> tuple[str, str] | None:
    """(host, port) of a ``Host`` header, the port filled in from the origin's scheme."""
    parsed = _split_origin(f"{scheme}://{host.strip().lower()}")
    return None if parsed is None else (parsed[1], parsed[2])


def _host_matches(rule: str, host: str) -> bool:
    if rule.startswith("*."):
        return host.endswith(rule[1:]) and len(host) > len(rule) - 1
    return rule == host


class AddressSlots:
    """Open sockets on the WebSocket port, in all and per remote address."""

    def __init__(self, total: int, per_address: int = 0) -> None:
        self.total = total
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def take(self, address: str) -> int | None:
        """Take a slot for a socket from ``address``; the HTTP status to refuse it with, or None."""
        if self._count >= self.total:
            return 503
        if self.per_address and self._open[address] >= self.per_address:
            return 429
        self._open[address] += 1
        self._count += 1
        return None

    def release(self, address: str) -> None:
        """Give back the slot of a socket that closed."""
        self._count -= 1
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]


class TokenBucket:
    """At most ``rate`` messages a second on average, in bursts of up to ``rate`` (at least one)."""

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        self.rate = rate
        self.clock = clock
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._checked = clock.seconds()

    def take(self) -> float:
        """Spend a token: 0 when one was there, else the seconds until one will be (nothing spent)."""
        now = self.clock.seconds()
        self._tokens = min(self.capacity, self._tokens + (now - self._checked) * self.rate)
        self._checked = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class TooManyFragments(Exception):
    """A message came in more frames than allowed."""


class MessageAssembler:
    """Puts fragmented WebSocket messages together: chunks in a list, joined once at the end.

    The total size is bounded by the protocol layer (``max_size``); this
    bounds the number of frames, since empty fragments cost work but no size.
    """

    def __init__(self, max_fragments: int) -> None:
        self.max_fragments = max_fragments
        self._chunks: list[bytes] = []
        self._text = True

    def add(self, frame: Frame) -> str | None:
        """The message a data frame completes (text; binary decoded leniently), or None.

        Raises ``TooManyFragments``, or ``UnicodeDecodeError`` for a text
        message that is not UTF-8.
        """
        opcode = frame.opcode
        data = cast(bytes, frame.data)  # the parser's frames hold bytes (Frame declares any bytes-like)
        if opcode is Opcode.CONT:
            chunks = self._chunks
            chunks.append(data)
            if len(chunks) > self.max_fragments:
                chunks.clear()
                raise TooManyFragments(f"a message in more than {self.max_fragments} frames")
            if not frame.fin:
                return None
            data = b"".join(chunks)
            chunks.clear()
        elif frame.fin:
            return decode_message(data, opcode is Opcode.TEXT)
        else:
            self._chunks.append(data)
            self._text = opcode is Opcode.TEXT
            return None
        return decode_message(data, self._text)


def decode_message(data: bytes, text: bool) -> str:
    """Text must be UTF-8; binary messages reach backends as strings, as with the reference broker."""
    return data.decode("utf-8") if text else data.decode("utf-8", "replace")

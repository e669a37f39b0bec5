"""The settings of a backend connection, validated in one place.

Every face (blocking, asyncio, decorators, twistd) takes the same keywords;
a nonsense value raises ``TypeError``/``ValueError`` naming the parameter,
at construction, not later on the reactor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from . import _install  # noqa: F401  refuses a pystrands/ folder shared with another distribution

__all__ = ["BackendSettings", "check_integer", "check_number", "check_port", "check_token"]


def check_number(name: str, value: Any, *, minimum: float, inclusive: bool = True) -> float:
    """A finite int or float not below ``minimum`` (above it, if not ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    too_small = value < minimum if inclusive else value <= minimum
    if math.isnan(value) or math.isinf(value) or too_small:
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a finite number {bound} {minimum}, not {value!r}")
    return float(value)


def check_integer(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """An int from ``minimum`` up to ``maximum`` (if given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}-{maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, not {value!r}")
    return value


def check_token(name: str, value: Any) -> str | None:
    """A shared secret: None (no token), or a str that is not empty (an empty one is a mistake, not a token)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty (leave it out for no token)")
    return value


def check_port(name: str, value: Any) -> int:
    """A TCP port number 1-65535."""
    return check_integer(name, value, minimum=1, maximum=65535)


@dataclass(frozen=True)
class BackendSettings:
    """How a backend talks to its broker; see each field for its meaning."""

    #: Reconnect after a lost or failed connection (False: one attempt only).
    auto_reconnect: bool = True
    #: Seconds before the first reconnection attempt.
    reconnect_delay: float = 1.0
    #: Cap on the delay between attempts, in seconds.
    max_reconnect_delay: float = 30.0
    #: Factor by which the delay grows after each failed attempt (>= 1).
    reconnect_backoff: float = 2.0
    #: Handlers of different WebSocket clients that may run at once.
    concurrency: int = 64
    #: Seconds without any data from the broker (heartbeats come every 15 s)
    #: before the connection is dropped and reconnecting starts; 0 disables.
    idle_timeout: float = 45.0
    #: Longest accepted line from the broker, in bytes; longer ones are skipped.
    max_line_length: int = 16 * 1024 * 1024
    #: Sends kept while reconnecting; past it, sends fail with SendBufferFull.
    send_buffer_size: int = 10_000
    #: Events read but not yet handled above which reading from the broker pauses.
    max_pending_events: int = 1000
    #: Bytes of such events above which reading pauses too.
    max_pending_bytes: int = 64 * 1024 * 1024
    #: Token sent in an ``auth`` frame first, for a broker run with --backend-token.
    backend_token: str | None = None
    #: A ``prometheus_client.CollectorRegistry`` the connection counts its metrics into (see
    #: :mod:`pystrands.metrics`); None (the default) counts nothing.
    metrics_registry: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.auto_reconnect, bool):
            raise TypeError(f"auto_reconnect must be a bool, not {type(self.auto_reconnect).__name__}")
        check_number("reconnect_delay", self.reconnect_delay, minimum=0)
        check_number("max_reconnect_delay", self.max_reconnect_delay, minimum=0)
        if self.max_reconnect_delay < self.reconnect_delay:
            raise ValueError(
                f"max_reconnect_delay ({self.max_reconnect_delay}) must be >= reconnect_delay"
                f" ({self.reconnect_delay})"
            )
        check_number("reconnect_backoff", self.reconnect_backoff, minimum=1)
        check_integer("concurrency", self.concurrency, minimum=1)
        check_number("idle_timeout", self.idle_timeout, minimum=0)
        check_integer("max_line_length", self.max_line_length, minimum=64)
        check_integer("send_buffer_size", self.send_buffer_size, minimum=0)
        check_integer("max_pending_events", self.max_pending_events, minimum=1)
        check_integer("max_pending_bytes", self.max_pending_bytes, minimum=1)
        check_token("backend_token", self.backend_token)
        if self.metrics_registry is not None:
            from .metrics import check_registry  # imports prometheus_client only when asked to count

            check_registry(self.metrics_registry)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The keyword names this class accepts."""
        return frozenset(field.name for field in fields(cls))

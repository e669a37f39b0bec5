"""When to try connecting again, and which failures deserve a warning: pure, no I/O, no clock.

:class:`RetryPolicy` plays the part of the ``backoffPolicy`` of Twisted's
``ClientService``: given how many attempts in a row have failed, it says
how long to wait before the next one, or that there is no next one. The
factory that owns the connection asks it and keeps the timer (and counts a
connection that ended before the broker's first frame as a failed attempt:
see :class:`~pystrands.protocol.BrokerClientFactory`); the policy
keeps no state, so one policy serves any number of connections and a test
checks it without a reactor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "worth_a_warning"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap and jitter; ``retry=False`` means a single attempt.

    The n-th failure in a row waits ``initial * factor ** (n - 1)`` seconds,
    at most ``maximum``, each wait scaled by a random factor within
    ``1 ± jitter`` (spreading the retries of many backends that lost the
    same broker), never beyond ``maximum``. ``max_retries`` (None: no
    limit) bounds the failures in a row after which it gives up.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.0
    retry: bool = True
    max_retries: int | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "jitter"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if not 1 <= self.factor < math.inf:
            raise ValueError(f"factor must be a finite number >= 1, not {self.factor!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be at most 1, not {self.jitter!r}")

    def delay(self, failures: int, uniform: Callable[[float, float], float] = random.uniform) -> float | None:
        """Seconds to wait after ``failures`` (>= 1) failed attempts in a row; None: give up."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, not {failures!r}")
        if not self.retry or (self.max_retries is not None and failures > self.max_retries):
            return None
        grown = min(self.initial, self.maximum)
        if self.factor > 1 and 0 < grown < self.maximum:
            # Past this many steps the cap holds: computing the power could overflow.
            steps_to_cap = math.log(self.maximum / grown, self.factor)
            grown = self.maximum if failures - 1 >= steps_to_cap else grown * self.factor ** (failures - 1)
        if self.jitter:
            grown *= uniform(1 - self.jitter, 1 + self.jitter)
        return min(grown, self.maximum)


def worth_a_warning(failures: int) -> bool:
    """Whether the ``failures``-th failure in a row is logged as a warning: the 1st, 2nd, 4th, 8th...

    A broker that stays away then costs a handful of warnings an hour
    (the interval between them doubles), not one per attempt.
    """
    return failures >= 1 and failures & (failures - 1) == 0

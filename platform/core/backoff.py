"""Waiting between tries at a service that is away (Redis restarting or stalled), for the
long-running consumers."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0


class Backoff:
    """The wait between tries while Redis is unreachable: doubling from ``low`` to ``high``,
    each a random part of that (consumers that lost Redis together do not all come back at
    once), and back to ``low`` after a success."""

    def __init__(self, *, low: float = BACKOFF_MIN_S, high: float = BACKOFF_MAX_S) -> None:
        self.low, self.high = low, high
        self.next = low

    def reset(self) -> None:
        self.next = self.low

    def delay(self) -> float:
        """The next wait, in seconds (and double the one after it, up to ``high``)."""
        delay = random.uniform(self.next / 2, self.next)
        self.next = min(self.next * 2, self.high)
        return delay

    def wait(self, delay: float, should_stop: Callable[[], bool]) -> None:
        """Sleep ``delay`` seconds, or less if ``should_stop()`` turns true meanwhile."""
        end = time.monotonic() + delay
        while not should_stop() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

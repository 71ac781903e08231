"""Long-running management commands (consumers) stop cleanly on SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def stop_flag() -> Callable[[], bool]:
    """Install SIGTERM/SIGINT handlers; returns a ``should_stop()`` that turns true on
    either, so the consumer finishes (and acknowledges) its batch before it exits."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopping

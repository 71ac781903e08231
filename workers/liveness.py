"""Liveness heartbeat files, for the probes of processes that serve no HTTP: the inference
and training workers and the usage consumer (``deploy/``).

A process that is alive but wedged (its consuming loop blocked on a dead connection, a lock,
a deadlock) consumes nothing and was never restarted. Each such process touches the file
named by ``LIVENESS_FILE`` from the loop that does its work, at most every
``LIVENESS_INTERVAL_S`` seconds, and the probe (``python -m workers.liveness FILE MAX_AGE_S``)
fails once the file is older than ``MAX_AGE_S``. Where the beat comes from is the point:

- a Celery worker: a timer on its consumer's event loop (``workers.celery_app``), the loop
  that takes messages off the queue, so it beats while idle and stops when that loop is
  stuck. An inference worker's forward passes run on its model threads, not on that loop:
  a long one does not delay the beat.
- the training worker (solo pool) runs a job on that same loop, which the job then holds for
  minutes: the job's step boundaries (every embedding batch, optimiser step and epoch, where
  it asks whether it was cancelled: ``workers.training.tasks``) beat meanwhile. A job stuck
  inside one step stops them.
- the usage consumer: each turn of its read-and-store loop (``metering.consumer``), which
  reads at most ``USAGE_FLUSH_INTERVAL_S`` at a time, so it beats while idle.

Touching a file costs a system call, no network round trip: the probe reads nothing but
the file's age. No Django, no torch here: the probe runs this module alone, in a fresh
interpreter.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_ENV = "LIVENESS_FILE"
INTERVAL_ENV = "LIVENESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 5.0


class LivenessFile:
    """Touches ``path`` at most every ``interval_s`` seconds when ``beat()`` is called (a
    loop may call it on every turn); ``path`` None: does nothing. Thread-safe."""

    def __init__(self, path: str | None, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.path = Path(path) if path else None
        self.interval_s = interval_s
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._warned = False

    def beat(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval_s:
                return
            self._last = now
        try:
            self.path.touch()
        except OSError as exc:  # a probe that fails says so; the work goes on
            if not self._warned:
                self._warned = True
                logger.warning("liveness file %s not written: %s", self.path, exc)


def from_env(env: Mapping[str, str] | None = None) -> LivenessFile:
    """The ``LIVENESS_FILE`` heartbeat (unset or empty: none), beating every
    ``LIVENESS_INTERVAL_S`` seconds (5 unless set)."""
    env = os.environ if env is None else env
    interval = float(env.get(INTERVAL_ENV, "").strip() or DEFAULT_INTERVAL_S)
    if interval <= 0:
        raise ValueError(f"{INTERVAL_ENV} must be above 0, got {interval}")
    return LivenessFile(env.get(FILE_ENV, "").strip() or None, interval)


_process: LivenessFile | None = None


def process() -> LivenessFile:
    """This process's heartbeat (``from_env``, read on first use)."""
    global _process
    if _process is None:
        _process = from_env()
    return _process


def beat() -> None:
    process().beat()


def age_s(path: str | Path) -> float | None:
    """Seconds since ``path`` was last touched; None when it does not exist."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.liveness FILE MAX_AGE_S``: 0 when FILE was touched within
    MAX_AGE_S seconds, else 1 (what a Kubernetes exec probe or a compose healthcheck reads)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m workers.liveness FILE MAX_AGE_S", file=sys.stderr)
        return 2
    path, max_age = args[0], float(args[1])
    age = age_s(path)
    if age is None:
        print(f"{path}: no heartbeat yet", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"{path}: last heartbeat {age:.0f} s ago (more than {max_age:g} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

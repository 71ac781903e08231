"""Redis locks held for as long as their work runs, however long Stripe takes."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis
from redis.exceptions import LockError
from redis.lock import Lock

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def lock_held(lock: Lock) -> Iterator[None]:
    """Renew ``lock`` to its full timeout every third of it while the block runs. A change
    makes up to five Stripe calls, each allowed 80 s and retried: one that outlasted the
    lock let the next change in, and both created a Stripe subscription (the first,
    unrecorded, renewed for ever). The timeout is then only how long a process that died
    holding it keeps others out."""
    every = float(lock.timeout or 60) / 3
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every):
            try:
                lock.reacquire()
            except (redis.RedisError, LockError):
                logger.warning("lost the lock %s while holding it", lock.name)
                return

    keeper = threading.Thread(target=renew, name=f"keep-{lock.name}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()

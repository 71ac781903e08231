"""Redis locks held for as long as their work runs, however long Stripe takes."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from limits.services import redis_client

logger = logging.getLogger(__name__)

# A plan change holds its tenant's lock for at most this long (Stripe calls included), and
# a concurrent one (or a ledger correction) waits this long for it before giving up.
CHANGE_LOCK_S = 120
CHANGE_WAIT_S = 30


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


def tenant_change_lock(*, tenant_id: str) -> Lock:
    """The tenant's plan-change lock (held with ``lock_held``): also what a ledger correction
    holds while it checks that its period is open and appends (``metering.corrections``), so
    that a move to free, whose cancel invoices the period at once, never falls in between."""
    # NOTE: not thread-local: the keep-alive thread renews it (``lock_held``).
    return redis_client().lock(
        f"subscription-change:{tenant_id}",
        timeout=CHANGE_LOCK_S,
        blocking_timeout=CHANGE_WAIT_S,
        thread_local=False,
    )

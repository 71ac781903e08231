"""A key's ``last_used_at``, written from the request path at most once a minute, and never
holding a call up for long (see ``last_used_touch``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db import OperationalError, connection, transaction
from django.db.models import Q

from .models import ApiKey

logger = logging.getLogger(__name__)

LAST_USED_RESOLUTION = timedelta(minutes=1)


def last_used_touch(key: ApiKey, now: datetime) -> None:
    """Write ``last_used_at`` at most once a minute per key: the row was just read, so the
    common case costs nothing, and the conditional UPDATE keeps racing replicas from all
    writing. Best effort: a write that fails (a database too busy to take it) is skipped,
    and a later request writes it; bookkeeping never fails the customer's call."""
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    try:
        with _lock_wait_capped(), transaction.atomic():  # a savepoint inside a transaction
            if connection.vendor == "postgresql" and not connection.savepoint_ids:
                # This transaction's own: the row lock another writer holds is waited on
                # briefly, not for as long as that writer takes.
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = '{LAST_USED_LOCK_WAIT_MS}ms'")
            ApiKey.objects.for_tenant(key.tenant_id).filter(stale, pk=key.pk).update(
                last_used_at=now
            )
    except OperationalError:
        logger.warning("last_used_at of key %s not written: database busy", key.pk, exc_info=True)
        return
    key.last_used_at = now


# How long ``last_used_touch`` waits for a database another writer has locked: every call
# of a key whose last use is due goes through it (a key's first call, then once a minute),
# and it waited the whole busy timeout (30 s on SQLite): a 20 s write lock held 40 calls,
# and /healthz behind them, for 17-19 s.
LAST_USED_LOCK_WAIT_MS = 200


@contextlib.contextmanager
def _lock_wait_capped() -> Iterator[None]:
    """On SQLite, the connection's busy timeout at ``LAST_USED_LOCK_WAIT_MS`` for the block
    (the write lock is taken at BEGIN IMMEDIATE), then back to what it was. PostgreSQL's
    is set inside the transaction (``SET LOCAL``)."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        (before,) = cursor.fetchone()
        cursor.execute(f"PRAGMA busy_timeout = {LAST_USED_LOCK_WAIT_MS}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {int(before)}")

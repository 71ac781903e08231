"""The quota counters: one per tenant and period (live) or calendar month (test mode) in
Redis, and their seeding from the ledger where Redis does not have one (``services``)."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from datetime import datetime

import redis
from django.conf import settings
from django.db import DatabaseError

from apikeys.models import ApiKey
from core.errors import APIError
from plans.models import Plan

from . import messages
from .selectors import quota_ledger_inputs

logger = logging.getLogger(__name__)


@functools.cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def quota_key(tenant_id: str, period_start: datetime, *, livemode: bool) -> str:
    """A tenant's inputs this period: test mode apart (its tests never use up production's)."""
    return f"quota:{tenant_id}:{int(period_start.timestamp())}" + ("" if livemode else ":test")


def quota_gen_key(key: str) -> str:
    """How many ledger corrections have given inputs back to the counter ``key``: a reading
    of the ledger taken before one is stale, and is not written over the counter (the
    correction's give-back would be undone for the rest of the period)."""
    return f"{key}:gen"


def quota_gen(key: str) -> str:
    """The counter's correction generation now ("" for none yet)."""
    return _text(redis_client().get(quota_gen_key(key)))


def quota_pending_key(key: str) -> str:
    """How many corrections of the counter ``key`` are committing and have not given their
    inputs back yet: a reading of the ledger taken then may net one already, and its
    give-back would then take the inputs off twice; it is not written over the counter."""
    return f"{key}:pending"


PENDING_TTL_S = 15  # a correction that died between its mark and its give-back: forgotten
# Lua: whether a ledger reading taken at generation ARGV[3] is stale for the counter
# KEYS[1]: a correction gave inputs back since (its generation, KEYS[2], moved on) or is
# giving some back (KEYS[3] > 0). The scripts that write a reading over a counter share it.
STALE_READING = (
    "(redis.call('GET', KEYS[2]) or '') ~= ARGV[3] "
    "or tonumber(redis.call('GET', KEYS[3]) or '0') > 0"
)
# Set the missing counter KEYS[1] to ARGV[1] (EX ARGV[2]) unless the reading is stale: 1
# where it stood (set, or the counter is there already), -1 where it is stale.
SEED_IF_CURRENT = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end "
    f"if {STALE_READING} then return -1 end "
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') return 1"
)
SEED_READS = 3  # ledger readings a seed tries before it answers 503
SEED_PAUSE_S = 0.05  # how long a seed waits, at most SEED_READS times, for a pending give-back
STALE_S = 1.0  # after a seed gave up: this process's requests for the counter 503 at once
_stale_until: dict[str, float] = {}


def _gen_and_pending(key: str) -> tuple[str, int]:
    """The counter's correction generation ("" for none) and its pending give-backs."""
    gen, pending = redis_client().mget([quota_gen_key(key), quota_pending_key(key)])
    return _text(gen), int(pending or 0)


def _text(value: bytes | str | None) -> str:
    return "" if value is None else value.decode() if isinstance(value, bytes) else value


def quota_cap(plan: Plan, *, livemode: bool) -> int:
    """Inputs a period allows (-1: no cap): the plan's hard cap for live calls, and the
    test-mode allowance for test calls, which are never billed."""
    if not livemode:
        return int(settings.TEST_MODE_MONTHLY_INPUTS)
    return plan.monthly_hard_cap if plan.monthly_hard_cap is not None else -1


# When this process last seeded each quota counter (time.monotonic()): the requests that
# found a counter missing together (after a flush, every one in flight) wait for one of them
# to read the ledger, rather than each reading it. Notes older than a request are no use to
# it, so they are dropped once there are many.
SEED_NOTES_MAX = 1024
SEED_NOTE_S = 10.0
_seeding = threading.Lock()  # guards the two dicts below
_seed_locks: dict[str, threading.Lock] = {}
_seeded_at: dict[str, float] = {}


def quota_seed(
    *,
    api_key: ApiKey,
    period: tuple[datetime, datetime],
    key: str,
    ttl: int,
    found_missing_at: float,
) -> int:
    """Seed the missing quota counter ``key`` with the period's inputs in the ledger, live or
    test mode as the key is (0 in a new period), unless it is there again, and return them
    for the admission script, which sets them only if the counter is still missing; -1
    (nothing read) where another request of this process seeded it after
    ``found_missing_at``: run the script again as it was.

    Answered calls still on their way to the ledger are not in it: a flush loses those, as
    it did, but no longer the period's whole count."""
    if _stale_until.get(key, -math.inf) > time.monotonic():
        raise quota_unreadable()  # (a seed just gave up on it: no queue of ledger reads)
    with _seeding:
        lock = _seed_locks.setdefault(key, threading.Lock())
    with lock:
        if _seeded_at.get(key, -math.inf) >= found_missing_at:
            return -1
        for _ in range(SEED_READS):
            gen, pending = _gen_and_pending(key)
            if pending:  # a correction is giving inputs back: a reading now may be stale
                time.sleep(SEED_PAUSE_S)
                continue
            try:
                seed = quota_ledger_inputs(
                    tenant_id=api_key.tenant_id,
                    period_start=period[0],
                    period_end=period[1],
                    livemode=api_key.livemode,
                )
            except DatabaseError:
                # NOTE: never on money: without the ledger the counter would start from 0
                # and admit the whole cap again. Nothing is reserved yet; it may retry.
                logger.exception("quota counter %s is missing and the ledger cannot be read", key)
                raise quota_unreadable() from None
            # Seeded now, whatever this request's verdict, for the requests waiting on the
            # lock; read again where a correction gave inputs back meanwhile.
            keys = (key, quota_gen_key(key), quota_pending_key(key))
            if redis_client().eval(SEED_IF_CURRENT, 3, *keys, seed, ttl, gen) == 1:
                break
        else:
            # NOTE: never on money: a stale reading would undo a correction's give-back or
            # take it twice. Nothing is reserved yet; the client may retry.
            logger.warning("quota counter %s: corrections kept its seed stale; 503", key)
            with _seeding:
                _stale_until[key] = time.monotonic() + STALE_S
                if len(_stale_until) > SEED_NOTES_MAX:
                    _stale_until.clear()
            raise quota_unreadable()
        now = time.monotonic()
        with _seeding:
            _seeded_at[key] = now
            if len(_seeded_at) > SEED_NOTES_MAX:
                for old in [k for k, at in _seeded_at.items() if now - at > SEED_NOTE_S]:
                    del _seeded_at[old]
                    _seed_locks.pop(old, None)
        return seed


def quota_unreadable() -> APIError:
    """The 503 for a call whose quota cannot be checked (nothing reserved: it may retry)."""
    return APIError(
        messages.QUOTA_UNREADABLE, status=503, code="overloaded", headers={"Retry-After": "1"}
    )

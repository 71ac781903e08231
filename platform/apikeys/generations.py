"""A key's generation in Redis: what every API process's key cache confirms a cached row
against on each request (``services.KeyCheck``). Setting it anew makes a change to a key
(or to its tenant) apply on the key's next request in every process."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from django.db import transaction

from core.errors import Overloaded
from core.ids import random_token
from limits.services import redis_client

from . import messages
from .models import ApiKey

logger = logging.getLogger(__name__)

# A key's generation in Redis: a random token, set anew on every change. It expires after a
# day unread (and a flushed Redis loses it): a missing generation never matches a cached
# one, so losing it costs a database read, never a stale key.
GENERATION_TTL_S = 86_400


def generation_key(key_id: str) -> str:
    return f"apikey:gen:{key_id}"


def api_key_generation_bump(*, key_ids: Iterable[str]) -> None:
    """Give keys a new generation, now and again once the caller's transaction commits:
    every process's cached row for them stops being used on its next request. Call it
    where a key's row changes (revoke, rotate, the admin), inside the transaction.

    The first bump failing fails the change (a 503: Redis is what the API cannot do without
    anyway); the second, after the commit, is logged (rows read between the two would then
    be used until ``KEY_CACHE_TTL_S``)."""
    ids = list(key_ids)
    if not ids:
        return

    def bump() -> None:
        pipe = redis_client().pipeline(transaction=False)
        for key_id in ids:
            pipe.set(generation_key(key_id), random_token(16), ex=GENERATION_TTL_S)
        pipe.execute()

    try:
        bump()
    except redis.RedisError:
        raise Overloaded(messages.STORE_DOWN, code="broker_unavailable") from None

    def after_commit() -> None:
        try:
            bump()
        except redis.RedisError:
            logger.exception("keys %s changed but their generation was not set anew", ids)

    transaction.on_commit(after_commit)


def api_key_generation_bump_for_tenants(*, tenant_ids: Iterable[str]) -> None:
    """``api_key_generation_bump`` for every key of these tenants: where a tenant changes in
    a way its keys' next requests must see (suspended, reactivated, deleted). A cached row
    whose generation moved on is read again from the database, with its tenant."""
    keys = ApiKey.objects.unscoped().filter(tenant_id__in=list(tenant_ids))
    api_key_generation_bump(key_ids=list(keys.values_list("pk", flat=True)))

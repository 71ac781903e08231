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
from tenants.selectors import tenant_context_forget

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
    try:
        _bump(ids)
    except redis.RedisError:
        raise Overloaded(messages.STORE_DOWN, code="broker_unavailable") from None
    _bump_after_commit(ids)


def _bump(ids: list[str]) -> None:
    pipe = redis_client().pipeline(transaction=False)
    for key_id in ids:
        pipe.set(generation_key(key_id), random_token(16), ex=GENERATION_TTL_S)
    pipe.execute()


def _bump_after_commit(ids: list[str]) -> None:

    def after_commit() -> None:
        try:
            _bump(ids)
        except redis.RedisError:
            logger.exception("keys %s changed but their generation was not set anew", ids)

    transaction.on_commit(after_commit)


def api_key_generation_bump_for_tenants(*, tenant_ids: Iterable[str]) -> None:
    """``api_key_generation_bump`` for every key of these tenants: where a tenant changes in
    a way its keys' next requests must see (suspended, reactivated, deleted). A cached row
    whose generation moved on is read again from the database, with its tenant."""
    keys = ApiKey.objects.unscoped().filter(tenant_id__in=list(tenant_ids))
    api_key_generation_bump(key_ids=list(keys.values_list("pk", flat=True)))


def tenant_context_changed(*, tenant_id: str) -> None:
    """What a tenant's requests are admitted under changed (its plan, its subscription's
    state): every API process applies it on the tenant's next request, as a suspension. This
    process forgets its copy; a new generation on each of the tenant's live keys sends the
    others back to the database for theirs (before, another process admitted calls and
    fine-tunes on the old plan for up to ``TENANT_CONTEXT_TTL_S`` after a move to free had
    been answered). Now, and again once the caller's transaction commits. Best effort: the
    change has been made (in Stripe too) by then; with Redis down, the others follow within
    the TTL."""
    tenant_context_forget(tenant_id=tenant_id)
    keys = ApiKey.objects.unscoped().filter(tenant_id=tenant_id, revoked_at__isnull=True)
    ids = list(keys.values_list("pk", flat=True))
    if not ids:
        return
    try:
        _bump(ids)
    except redis.RedisError:
        logger.warning("tenant %s changed; its keys' generations were not set anew", tenant_id)
    _bump_after_commit(ids)

"""Creating, authenticating, rotating and revoking API keys."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import redis
from django.db import transaction
from django.utils import timezone

from core.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    PermissionError_,
)
from core.ids import random_token
from core.rows import column, fetch_one
from limits.services import redis_client
from tenants.models import Tenant
from tenants.selectors import tenant_with_plan

from . import messages
from .generations import GENERATION_TTL_S, api_key_generation_bump, generation_key
from .last_used import last_used_touch
from .models import ALL_SCOPES, ApiKey
from .selectors import api_key_get

logger = logging.getLogger(__name__)

PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 40  # base62: ~238 bits of entropy


# The key cache: each process keeps the key rows it read, by secret digest, for up to this
# long, and every request served from it confirms in its admission round trip that the key's
# generation in Redis is still the one the row was read under (``KeyCheck``). Revoking or
# rotating a key sets a new generation, so the change still takes effect on the next request
# in every process. Saves a database read per API call (an indexed SELECT: ~75 us of the API's
# CPU on SQLite, a network round trip on PostgreSQL).
KEY_CACHE_TTL_S = 60.0
KEY_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What a request authenticated from the key cache must confirm before it runs: that
    ``redis_key`` (the key's generation) still holds ``generation``."""

    digest: str
    redis_key: str
    generation: bytes


@dataclass(frozen=True, slots=True)
class _Cached:
    key: ApiKey
    check: KeyCheck
    expires: float  # time.monotonic()


_key_cache: dict[str, _Cached] = {}
_key_cache_lock = threading.Lock()


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown to the customer once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _mint_secret(mode: str, public_id: str) -> str:
    return f"sk_{mode}_{public_id}_{random_token(SECRET_LENGTH)}"


def _check_scopes(scopes: list[str], creator: ApiKey | None) -> list[str]:
    cleaned: list[str] = []
    for scope in scopes:
        if scope not in ALL_SCOPES:
            raise InvalidRequest(
                messages.UNKNOWN_SCOPE.format(scope=scope), code="invalid_scope", param="scopes"
            )
        if creator is not None and not creator.has_scope(scope):
            raise PermissionError_(
                messages.SCOPE_ESCALATION.format(scope=scope), code="insufficient_scope"
            )
        if scope not in cleaned:
            cleaned.append(scope)
    return cleaned


def _expiry_escalation(limit: datetime, *, param: str) -> PermissionError_:
    """403: the calling key expires at ``limit``, and the key asked for would outlive it."""
    at = limit.isoformat().replace("+00:00", "Z")
    return PermissionError_(
        messages.OUTLIVES_CREATOR.format(at=at), code="expiry_escalation", param=param
    )


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str = "",
    scopes: list[str],
    mode: str = ApiKey.Mode.LIVE,
    expires_at: datetime | None = None,
    never_expires: bool = False,
    created_by: ApiKey | None = None,
) -> CreatedKey:
    """``expires_at`` None: never expires, or, made by a key that expires (``created_by``),
    when that key does, unless ``never_expires`` says "never" outright (the API's explicit
    null), which such a key cannot grant."""
    scopes = _check_scopes(scopes, created_by)
    if created_by is not None and not created_by.livemode and mode != ApiKey.Mode.TEST:
        # As in Stripe, test mode never reaches live objects: a live key would.
        raise PermissionError_(messages.TEST_MINTS_LIVE, code="livemode_required", param="mode")
    if not scopes:
        raise InvalidRequest(
            "scopes must name at least one scope.", code="invalid_parameter", param="scopes"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest(messages.EXPIRES_IN_PAST, code="invalid_parameter", param="expires_at")
    if created_by is not None and created_by.expires_at is not None:
        # As with scopes, a key mints no more than it has: a key that expires cannot make
        # one that outlives it (by default, the new key expires with it).
        if expires_at is None and not never_expires:
            expires_at = created_by.expires_at
        elif expires_at is None or expires_at > created_by.expires_at:
            raise _expiry_escalation(created_by.expires_at, param="expires_at")
    public_id = random_token(PUBLIC_ID_LENGTH)
    secret = _mint_secret(mode, public_id)
    key = ApiKey.objects.create(
        id=f"key_{public_id}",
        tenant=tenant,
        name=name,
        mode=mode,
        scopes=scopes,
        secret_hash=hash_secret(secret),
        expires_at=expires_at,
    )
    return CreatedKey(key=key, secret=secret)


def api_key_authenticate(*, secret: str) -> ApiKey:
    """The key a presented secret belongs to, read from the database, or an
    AuthenticationError (``PermissionError_`` for a suspended tenant)."""
    return _authenticate(secret, cached=False)[0]


def api_key_authenticate_cached(*, secret: str) -> tuple[ApiKey, KeyCheck | None]:
    """``api_key_authenticate`` through this process's key cache: the key, and what the
    request must confirm before it runs (``KeyCheck``; None when the row was read from the
    database just now). Every check on the row (revoked, expired, grace period, tenant)
    runs as for a fresh one."""
    return _authenticate(secret, cached=True)


def key_check_confirmed(check: KeyCheck, prefetched: Mapping[str, Any] | None = None) -> bool:
    """Whether a key served from the cache is unchanged: its generation, from ``prefetched``
    (read with the request's admission) when it holds it, else read now. A generation that
    cannot be read is not confirmed: the request authenticates again from the database."""
    if prefetched is not None and check.redis_key in prefetched:
        return bool(prefetched[check.redis_key] == check.generation)
    try:
        return bool(redis_client().get(check.redis_key) == check.generation)
    except redis.RedisError:
        return False


def api_key_forget(*, digest: str) -> None:
    """Drop this process's cached row for a secret digest (its generation moved on)."""
    with _key_cache_lock:
        _key_cache.pop(digest, None)


def _authenticate(
    secret: str, *, cached: bool, again: bool = False
) -> tuple[ApiKey, KeyCheck | None]:
    """NOTE: lookup is by the SHA-256 of the secret (an indexed equality), so no stored value
    is compared byte by byte against attacker input; the final comparison of digests is
    still constant-time."""
    if not secret.startswith(("sk_live_", "sk_test_")) or len(secret) > 200:
        raise AuthenticationError(messages.MALFORMED_KEY, code="invalid_api_key")
    digest = hash_secret(secret)
    entry = _key_cache.get(digest) if cached else None
    check = None
    if entry is not None and time.monotonic() < entry.expires:
        key, check = entry.key, entry.check
    else:
        found = _key_read(secret, digest) if cached else _key_by_digest(digest)
        if found is None:
            raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
        key = found
    # A row just read from the database goes with its tenant read from it too: a suspension
    # or reactivation sets a new generation on the tenant's keys
    # (``api_key_generation_bump_for_tenants``), which sends cached rows here.
    # (Only a row cached just now: one read while Redis is down is not cached, and reading
    # its tenant too on every request would load the database when it can least afford it.)
    fresh_tenant = cached and check is None and digest in _key_cache
    now = timezone.now()
    if hmac.compare_digest(key.secret_hash, digest):
        pass
    elif key.previous_secret_hash and hmac.compare_digest(key.previous_secret_hash, digest):
        if key.previous_secret_expires_at is None or key.previous_secret_expires_at <= now:
            raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
    else:  # pragma: no cover - the database matched on this digest
        raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
    refusal = None
    if key.revoked_at is not None:
        refusal = AuthenticationError(messages.REVOKED_KEY, code="api_key_revoked")
    elif key.expires_at is not None and key.expires_at <= now:
        refusal = AuthenticationError(messages.EXPIRED_KEY, code="api_key_expired")
    if refusal is not None:
        if check is not None and not again and not key_check_confirmed(check):
            # As for a suspension below: a row cached before the key was changed (an
            # operator extended its expiry) is read again before it is refused; it kept
            # answering 401 until the cache entry aged out, up to a minute (an audit).
            api_key_forget(digest=digest)
            return _authenticate(secret, cached=cached, again=True)
        raise refusal
    # The tenant, its subscription and plan (limits need them on every request).
    # NOTE: a cached row is shared by the process's threads; what is set on it here (the
    # tenant, last_used_at) is the same for all of them.
    try:
        key.tenant = tenant_with_plan(tenant_id=key.tenant_id, fresh=fresh_tenant)
    except Tenant.DoesNotExist:  # deleted since the row was cached
        api_key_forget(digest=digest)
        raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key") from None
    if not key.tenant.is_active:
        if check is not None and not again and not key_check_confirmed(check):
            # Reactivated (or the key changed) since the row was cached: this refusal comes
            # before admission, which would have confirmed the key, so it is confirmed here
            # (one Redis read, on refusals only), and the row and tenant are read again.
            api_key_forget(digest=digest)
            return _authenticate(secret, cached=cached, again=True)
        raise PermissionError_(messages.TENANT_SUSPENDED, code="tenant_suspended")
    last_used_touch(key, now)
    return key, check


def _key_read(secret: str, digest: str) -> ApiKey | None:
    """The key row from the database, cached under the generation its key had before the
    read: a change committed after that read sets a new generation, which the next request
    served from the cache sees. A key without a generation yet gets one after the read, and
    is cached from its next request on (a generation set after the read could hide a change
    made in between). Nothing is written for a secret that matches no key, so guessing
    secrets costs Redis no memory. Rows whose generation cannot be read are not cached."""
    key_id = _key_id_of(secret)
    generation = None
    if key_id is not None:
        try:
            generation = cast(bytes | None, redis_client().get(generation_key(key_id)))
        except redis.RedisError:
            key_id = None
    key = _key_by_digest(digest)
    if key is None or key.pk != key_id:
        return key
    if generation is None:
        with contextlib.suppress(redis.RedisError):
            token = random_token(16)
            redis_client().set(generation_key(key_id), token, nx=True, ex=GENERATION_TTL_S)
        return key
    check = KeyCheck(digest=digest, redis_key=generation_key(key_id), generation=generation)
    with _key_cache_lock:
        if len(_key_cache) >= KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[digest] = _Cached(key, check, time.monotonic() + KEY_CACHE_TTL_S)
    return key


def _key_id_of(secret: str) -> str | None:
    """The key id a secret names (``sk_<mode>_<public id>_<token>``, as ``_mint_secret``
    writes them), or None for a secret of another shape (read from the database alone)."""
    parts = secret.split("_")
    if len(parts) != 4 or not parts[2].isalnum():
        return None
    return f"key_{parts[2]}"


def _key_by_digest(digest: str) -> ApiKey | None:
    """The key whose current or previous secret hashes to ``digest`` (both unique columns).

    NOTE: it runs on every API call: one hand-written SELECT (``core.rows``) rather than a
    compiled queryset, which cost 0.65 ms of CPU against ~0.07 ms."""
    return fetch_one(ApiKey, _key_where(), [digest, digest])


@functools.cache
def _key_where() -> str:
    return f"{column(ApiKey, 'secret_hash')} = %s OR {column(ApiKey, 'previous_secret_hash')} = %s"


@transaction.atomic
def api_key_rotate(
    *, tenant: Tenant, key_id: str, grace_period_seconds: int = 0, caller: ApiKey | None = None
) -> CreatedKey:
    """A new secret for the same key id. The old secret keeps working for the grace period
    (0: it stops at once), so a fleet can be redeployed without downtime.

    A key holds one previous secret: while an earlier rotation's grace period runs, another
    rotation with a grace period is a 409 (it would end that period before the time it
    announced); one without (0) ends every old secret at once, as after a leak.

    The key is read locked: two rotations at once are one after the other (each answered a
    secret that works, or a 409), never two writes of which the last silently wins (one
    caller handed a dead secret, or a grace-0 rotation's old secret left alive)."""
    key = api_key_get(tenant=tenant, key_id=key_id, caller=caller, for_update=True)
    now = timezone.now()
    if (
        caller is not None
        and caller.expires_at is not None
        and caller.pk != key.pk
        and (key.expires_at is None or key.expires_at > caller.expires_at)
    ):
        # A new secret for a key that outlives the caller is a key that outlives it: as
        # when creating one (api_key_create), refused.
        raise _expiry_escalation(caller.expires_at, param="id")
    if key.expires_at is not None and key.expires_at <= now:
        at = key.expires_at.isoformat().replace("+00:00", "Z")
        raise Conflict(
            messages.ROTATE_EXPIRED.format(key_id=key.pk, at=at), code="key_expired", param="id"
        )
    running = key.previous_secret_expires_at
    if grace_period_seconds > 0 and key.previous_secret_hash and running and running > now:
        raise Conflict(
            messages.ROTATION_IN_GRACE.format(until=running.isoformat().replace("+00:00", "Z")),
            code="rotation_in_progress",
            param="grace_period_seconds",
        )
    secret = _mint_secret(key.mode, key.id.removeprefix("key_"))
    if grace_period_seconds > 0:
        key.previous_secret_hash = key.secret_hash
        key.previous_secret_expires_at = now + timedelta(seconds=grace_period_seconds)
    else:
        key.previous_secret_hash = None
        key.previous_secret_expires_at = None
    key.secret_hash = hash_secret(secret)
    key.save(update_fields=["secret_hash", "previous_secret_hash", "previous_secret_expires_at"])
    api_key_generation_bump(key_ids=[key.pk])
    return CreatedKey(key=key, secret=secret)

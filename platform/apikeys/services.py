"""Creating, authenticating, rotating and revoking API keys."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import AuthenticationError, InvalidRequest, NotFound, PermissionError_
from core.ids import random_token
from core.rows import column, fetch_one
from tenants.models import Tenant
from tenants.selectors import tenant_with_plan

from . import messages
from .models import ALL_SCOPES, ApiKey

logger = logging.getLogger(__name__)

PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 40  # base62: ~238 bits of entropy
LAST_USED_RESOLUTION = timedelta(minutes=1)


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


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str = "",
    scopes: list[str],
    mode: str = ApiKey.Mode.LIVE,
    expires_at: datetime | None = None,
    created_by: ApiKey | None = None,
) -> CreatedKey:
    scopes = _check_scopes(scopes, created_by)
    if not scopes:
        raise InvalidRequest("scopes must name at least one scope.", param="scopes")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest(messages.EXPIRES_IN_PAST, param="expires_at")
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
    """The key a presented secret belongs to, or an AuthenticationError.

    NOTE: lookup is by the SHA-256 of the secret (an indexed equality), so no stored value is
    compared byte by byte against attacker input; the final comparison of digests is still
    constant-time."""
    if not secret.startswith(("sk_live_", "sk_test_")) or len(secret) > 200:
        raise AuthenticationError(messages.MALFORMED_KEY, code="invalid_api_key")
    digest = hash_secret(secret)
    key = _key_by_digest(digest)
    if key is None:
        raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
    now = timezone.now()
    if hmac.compare_digest(key.secret_hash, digest):
        pass
    elif key.previous_secret_hash and hmac.compare_digest(key.previous_secret_hash, digest):
        if key.previous_secret_expires_at is None or key.previous_secret_expires_at <= now:
            raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
    else:  # pragma: no cover - the database matched on this digest
        raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
    if key.revoked_at is not None:
        raise AuthenticationError(messages.REVOKED_KEY, code="api_key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise AuthenticationError(messages.EXPIRED_KEY, code="api_key_expired")
    # The tenant, its subscription and plan (limits need them on every request).
    key.tenant = tenant_with_plan(tenant_id=key.tenant_id)
    if not key.tenant.is_active:
        raise PermissionError_(messages.TENANT_SUSPENDED, code="tenant_suspended")
    _touch_last_used(key, now)
    return key


def _key_by_digest(digest: str) -> ApiKey | None:
    """The key whose current or previous secret hashes to ``digest`` (both unique columns).

    NOTE: it runs on every API call: one hand-written SELECT (``core.rows``) rather than a
    compiled queryset, which cost 0.65 ms of CPU against ~0.07 ms."""
    return fetch_one(ApiKey, _key_where(), [digest, digest])


@functools.cache
def _key_where() -> str:
    return f"{column(ApiKey, 'secret_hash')} = %s OR {column(ApiKey, 'previous_secret_hash')} = %s"


def _touch_last_used(key: ApiKey, now: datetime) -> None:
    """Write ``last_used_at`` at most once a minute per key: the row was just read, so the
    common case costs nothing, and the conditional UPDATE keeps racing replicas from all
    writing. Best effort: a write that fails (a database too busy to take it) is skipped,
    and a later request writes it; bookkeeping never fails the customer's call."""
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    try:
        with transaction.atomic():  # a savepoint inside a request's transaction
            ApiKey.objects.for_tenant(key.tenant_id).filter(stale, pk=key.pk).update(
                last_used_at=now
            )
    except OperationalError:
        logger.warning("last_used_at of key %s not written: database busy", key.pk, exc_info=True)
        return
    key.last_used_at = now


def api_key_get(*, tenant: Tenant, key_id: str) -> ApiKey:
    key = ApiKey.objects.for_tenant(tenant).filter(pk=key_id, revoked_at__isnull=True).first()
    if key is None:
        raise NotFound(messages.KEY_NOT_FOUND.format(key_id=key_id), param="id")
    return key


@transaction.atomic
def api_key_rotate(*, tenant: Tenant, key_id: str, grace_period_seconds: int = 0) -> CreatedKey:
    """A new secret for the same key id. The old secret keeps working for the grace period
    (0: it stops at once), so a fleet can be redeployed without downtime."""
    key = api_key_get(tenant=tenant, key_id=key_id)
    now = timezone.now()
    secret = _mint_secret(key.mode, key.id.removeprefix("key_"))
    if grace_period_seconds > 0:
        key.previous_secret_hash = key.secret_hash
        key.previous_secret_expires_at = now + timedelta(seconds=grace_period_seconds)
    else:
        key.previous_secret_hash = None
        key.previous_secret_expires_at = None
    key.secret_hash = hash_secret(secret)
    key.save(update_fields=["secret_hash", "previous_secret_hash", "previous_secret_expires_at"])
    return CreatedKey(key=key, secret=secret)


@transaction.atomic
def api_key_revoke(*, tenant: Tenant, key_id: str) -> ApiKey:
    """Effective on the next request: authentication reads the row every time."""
    key = api_key_get(tenant=tenant, key_id=key_id)
    key.revoked_at = timezone.now()
    key.previous_secret_hash = None
    key.save(update_fields=["revoked_at", "previous_secret_hash"])
    return key

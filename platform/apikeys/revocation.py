"""Revoking an API key, never the tenant's last way back to managing its keys."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, PermissionError_
from tenants.models import Tenant

from . import messages
from .generations import api_key_generation_bump
from .models import ApiKey, Scope
from .selectors import api_key_get, working_admin_keys


@transaction.atomic
def api_key_revoke(*, tenant: Tenant, key_id: str, caller: ApiKey | None = None) -> ApiKey:
    """Effective on the next request, in every process (``api_key_generation_bump``).

    The tenant's last working live admin key is not revoked (409 ``last_admin_key``): tenants
    have no dashboard, so without one no key could ever manage keys again."""
    key = api_key_get(tenant=tenant, key_id=key_id, caller=caller)
    now = timezone.now()
    if key.livemode and Scope.ADMIN in key.scope_list:
        if (
            caller is not None
            and caller.expires_at is not None
            and caller.pk != key.pk
            and (key.expires_at is None or key.expires_at > caller.expires_at)
        ):
            # As no key creates one that outlives it: an expiring key revoked the tenant's
            # permanent admin key, and the tenant was locked out once it expired.
            at = caller.expires_at.isoformat().replace("+00:00", "Z")
            raise PermissionError_(
                messages.OUTLIVES_REVOKER.format(at=at), code="expiry_escalation", param="id"
            )
        _refuse_last_admin_key(tenant=tenant, key=key, now=now)
    key.revoked_at = now
    key.previous_secret_hash = None
    key.save(update_fields=["revoked_at", "previous_secret_hash"])
    api_key_generation_bump(key_ids=[key.pk])
    return key


def _refuse_last_admin_key(*, tenant: Tenant, key: ApiKey, now: datetime) -> None:
    """409 when revoking ``key`` would leave the tenant no live, unrevoked, unexpired key with
    the admin scope, or only ones that expire before it would have. A test-mode admin key is
    no way back: it cannot create live keys.

    WARNING: the tenant's working live keys are locked (in one order, so two revocations
    cannot deadlock) before they are counted: of two concurrent revocations of its last two
    admin keys, the second counts after the first has committed, and is refused. On SQLite,
    which ignores FOR UPDATE, the IMMEDIATE transaction serialises them the same way."""
    locked = ApiKey.objects.for_tenant(tenant).select_for_update().order_by("pk")
    others = [other for other in working_admin_keys(locked, now=now) if other.pk != key.pk]
    if not others:
        raise Conflict(
            messages.LAST_ADMIN_KEY.format(key_id=key.pk), code="last_admin_key", param="id"
        )
    # Nor the one that lasts longest: the others expiring, the tenant was locked out then
    # (an audit: a permanent admin key revoked itself beside one that expired in 8 s).
    lasting = max(others, key=_lasts)
    if _lasts(lasting) < _lasts(key):
        at = _lasts(lasting).isoformat().replace("+00:00", "Z")
        raise Conflict(
            messages.LAST_LASTING_ADMIN_KEY.format(key_id=key.pk, at=at),
            code="last_admin_key",
            param="id",
        )


def _lasts(key: ApiKey) -> datetime:
    return key.expires_at or datetime.max.replace(tzinfo=UTC)

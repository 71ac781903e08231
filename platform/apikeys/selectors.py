"""Reading API keys: what a caller may see of its tenant's keys."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from core.errors import NotFound
from tenants.models import Tenant

from . import messages
from .models import ApiKey, Scope


def api_keys_visible(
    *, tenant: Tenant, caller: ApiKey | None = None, revoked: bool = False
) -> QuerySet[ApiKey]:
    """The tenant's keys a caller sees: a test-mode key sees only test-mode keys (as in
    Stripe, test mode never reaches live objects); a live key, or an operator, sees all.
    Revoked ones too with ``revoked`` (where a list's cursor is looked up)."""
    keys = ApiKey.objects.for_tenant(tenant)
    if not revoked:
        keys = keys.filter(revoked_at__isnull=True)
    if caller is not None and not caller.livemode:
        keys = keys.filter(mode=ApiKey.Mode.TEST)
    return keys


def api_key_get(
    *, tenant: Tenant, key_id: str, caller: ApiKey | None = None, for_update: bool = False
) -> ApiKey:
    """``for_update``: the row locked until the transaction ends (a read-modify-write)."""
    keys = api_keys_visible(tenant=tenant, caller=caller).filter(pk=key_id)
    key = (keys.select_for_update() if for_update else keys).first()
    if key is None:
        raise NotFound(messages.KEY_NOT_FOUND.format(key_id=key_id), param="id")
    return key


def working_admin_keys(keys: QuerySet[ApiKey], *, now: datetime) -> list[ApiKey]:
    """Of ``keys``, the live ones, not revoked, not expired, with the admin scope: what a
    tenant manages its keys with (a test-mode admin key cannot create live keys)."""
    working = (
        keys.filter(mode=ApiKey.Mode.LIVE, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .only("pk", "tenant_id", "scopes", "expires_at")
    )
    # NOTE: the admin scope is matched here, not in SQL: SQLite has no JSON containment.
    return [key for key in working if Scope.ADMIN in key.scope_list]

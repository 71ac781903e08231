"""Reading tenants on the hot path."""

from __future__ import annotations

import threading
import time

from .models import Tenant

# Every authenticated request needs its tenant, subscription and plan. They change rarely
# (an operator suspends a tenant, a plan changes), so each process keeps them this long
# instead of joining four tables on every request (measured: that join's SQL compilation
# alone was ~2 ms of a ~9 ms request).
# NOTE: a key row read from the database (a key-cache miss, or a cached key whose generation
# moved on) is paired with a tenant read from the database too (``fresh``): suspending or
# reactivating a tenant sets a new generation on each of its keys (``tenants.services``), so
# it applies on the next request in every process, as a change to a key does.
TENANT_CONTEXT_TTL_S = 2.0
_MAX_ENTRIES = 10_000
_cache: dict[str, tuple[float, Tenant]] = {}
_lock = threading.Lock()


def tenant_with_plan(*, tenant_id: str, fresh: bool = False) -> Tenant:
    """The tenant with its subscription and plan loaded (``tenant.subscription`` may be
    missing: such a tenant is on the free plan); ``fresh``: read from the database whatever
    this process holds, and keep that."""
    now = time.monotonic()
    hit = None if fresh else _cache.get(tenant_id)
    if hit is not None and now - hit[0] < TENANT_CONTEXT_TTL_S:
        return hit[1]
    tenant = Tenant.objects.select_related("subscription__plan").get(pk=tenant_id)
    with _lock:
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        held = _cache.get(tenant_id)
        # A thread whose read began earlier never replaces a later one's (a fresh read made
        # after a suspension with a copy read before it).
        if held is None or held[0] <= now:
            _cache[tenant_id] = (now, tenant)
    return tenant


def tenant_context_forget(*, tenant_id: str) -> None:
    """Drop this process's copy at once (other processes follow within the TTL, or on the
    next request of a key whose generation was set anew)."""
    with _lock:
        _cache.pop(tenant_id, None)


def tenant_name_taken(*, name: str) -> bool:
    """Whether another tenant already has this name (letter case aside)."""
    return Tenant.objects.filter(name__iexact=name).exists()

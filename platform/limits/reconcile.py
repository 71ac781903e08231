"""Quota counters reconciled with the ledger.

The counter in Redis is what admission decides on; the ledger is the truth. A periodic
job compares them for every tenant on a capped plan and raises a counter that is behind
the ledger (a lost settle, a reservation made before a flush and refunded after it). A
counter that is missing (a flushed Redis, a new period) is admission's to fix: it seeds it
from the same ledger sum before it reserves anything. It never lowers a counter: inputs that
were answered but are still on their way to the ledger (the consumer batches) would
otherwise be handed out twice. Every difference is logged and counted.

Live counters only: a test-mode counter (``quota_key(livemode=False)``) bounds calls that are
never billed (admission seeds a missing one from the test-mode rows), and one that lags
costs no revenue.

A ledger correction (``metering.corrections``) lowers the ledger, which reconciliation never
follows down: ``quota_give_back`` takes the voided inputs off the counter of the period they
were counted in, exactly, so the allowance comes back and reconciliation (and a seed after a
flush, from the net ledger) keeps it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone
from prometheus_client import Counter

from apikeys.models import ApiKey
from billing.models import Subscription

from .quota import PENDING_TTL_S, STALE_READING, quota_gen, quota_gen_key, quota_pending_key
from .selectors import quota_ledger_inputs
from .services import enforcement_for, period_now, quota_key, redis_client

logger = logging.getLogger(__name__)
QUOTA_DRIFT = Counter(
    "quota_counter_drift_inputs_total", "Inputs a quota counter lagged behind the ledger by."
)


@dataclass(frozen=True)
class QuotaCheck:
    tenant_id: str
    ledger_inputs: int
    counter: int
    raised_by: int


def quota_reconcile_tenant(*, api_key: ApiKey) -> QuotaCheck | None:
    terms = enforcement_for(api_key)
    if terms.plan.monthly_hard_cap is None:
        return None
    tenant = api_key.tenant
    key = quota_key(tenant.pk, terms.period_start, livemode=True)
    gen = quota_gen(key)  # (read before the ledger: see quota_gen_key)
    ledger = quota_ledger_inputs(
        tenant_id=tenant.pk,
        period_start=terms.period_start,
        period_end=terms.period_end,
        livemode=True,
    )
    ttl = int((terms.period_end - timezone.now()).total_seconds()) + 7 * 86400
    # Raise to the ledger atomically, never lower (see the module's docstring), unless a
    # correction gave inputs back since the ledger was read, or is about to (the next run
    # looks again).
    script: Any = redis_client().register_script(
        "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
        f"if {STALE_READING} then return {{c, 0}} end "
        "if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) "
        "return {c, tonumber(ARGV[1]) - c} end return {c, 0}"
    )
    counter, raised = script(
        keys=[key, quota_gen_key(key), quota_pending_key(key)],
        args=[int(ledger), max(ttl, 60), gen],
    )
    if raised:
        QUOTA_DRIFT.inc(int(raised))
        logger.warning(
            "quota counter of %s was %d inputs behind the ledger (%d); raised", tenant.pk,
            raised, ledger,
        )  # fmt: skip
    return QuotaCheck(tenant.pk, int(ledger), int(counter), int(raised))


def quota_reconcile_all() -> list[QuotaCheck]:
    """Every tenant whose plan has a hard cap (the free plan included)."""
    checks = []
    capped = Subscription.objects.unscoped().filter(plan__monthly_hard_cap__isnull=False)
    tenant_ids = set(capped.values_list("tenant_id", flat=True))
    # Tenants without a subscription row are on the free plan, which is capped.
    keys = (
        ApiKey.objects.unscoped()
        .select_related("tenant", "tenant__subscription", "tenant__subscription__plan")
        .filter(revoked_at__isnull=True)
        .order_by("tenant_id", "-created_at")
    )
    seen: set[str] = set()
    for key in keys:
        if key.tenant_id in seen:
            continue
        seen.add(key.tenant_id)
        if key.tenant_id in tenant_ids or not hasattr(key.tenant, "subscription"):
            check = quota_reconcile_tenant(api_key=key)
            if check is not None:
                checks.append(check)
    return checks


# The counter less the inputs given back, never below 0; a missing counter is left missing
# (admission seeds it from the ledger, corrections netted). Returns the new value, or -1.
# Either way the counter's correction generation moves on and the give-back is no longer
# pending (``quota.quota_gen_key``, ``quota.quota_pending_key``): a reading of the ledger
# taken before this is not written over the counter.
_GIVE_BACK = (
    "redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], ARGV[2]) "
    "if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end "
    "local c = redis.call('GET', KEYS[1]) if not c then return -1 end "
    "local n = math.max(tonumber(c) - tonumber(ARGV[1]), 0) "
    "redis.call('SET', KEYS[1], n, 'KEEPTTL') return n"
)
_ABANDON = "if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end"


@dataclass(frozen=True)
class GiveBack:
    """Inputs a correction gives back to the quota counter ``key``, pending until its
    correcting row is committed (``quota_give_back``) or abandoned."""

    key: str
    inputs: int
    ttl: int


def quota_give_back_begin(*, tenant_id: str, occurred_at: datetime, inputs: int) -> GiveBack | None:
    """Before a correction of ``inputs`` of a live classification made at ``occurred_at`` is
    committed: the counter that counted them, if that is the period admission counts now
    (``services.period_now``), marked as awaiting a give-back, so that no reading of the
    ledger taken meanwhile (it may net the correction already, or not yet) is written over
    the counter until the give-back is done. None where there is nothing to give back (a
    past period's counter admits nothing any more). Test-mode usage is never corrected."""
    sub = Subscription.objects.for_tenant(tenant_id).first()
    start, end = period_now(sub, timezone.now())
    if inputs <= 0 or not start <= occurred_at < end:
        return None
    key = quota_key(tenant_id, start, livemode=True)
    pipe = redis_client().pipeline(transaction=True)
    pipe.incr(quota_pending_key(key))
    pipe.expire(quota_pending_key(key), PENDING_TTL_S)
    pipe.execute()
    return GiveBack(key, inputs, int((end - start).total_seconds()) + 7 * 86400)


def quota_give_back(give: GiveBack) -> int:
    """Take the correction's inputs off its counter, now that the ledger no longer holds
    them. Returns the counter's new value, or -1 where there is none to lower."""
    keys = (give.key, quota_gen_key(give.key), quota_pending_key(give.key))
    return int(redis_client().eval(_GIVE_BACK, 3, *keys, give.inputs, give.ttl))


def quota_give_back_abandon(give: GiveBack) -> None:
    """The correction was not committed: nothing to give back, no longer pending."""
    redis_client().eval(_ABANDON, 1, quota_pending_key(give.key))

"""Writing the usage ledger."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing.periods import LATE_USAGE_HORIZON, period_of
from core.rows import insert_new
from economics.services import plans_known, rollup_apply, tenant_plans_now
from tenants.models import Tenant
from workers.contract import UsageEvent

from .metrics import USAGE_PAST_BILLING
from .models import UsageRecord
from .partitions import skip_stored

logger = logging.getLogger(__name__)

# The largest an event may carry: what the ledger's columns hold (inputs and cached are
# 32-bit; cost_micros has 16 digits before its 4 decimals), and for tokens (64-bit) and
# compute_ms, values the rollups can go on summing per day. A larger one failed its whole
# batch's insert (or its rollup's sum), every time the batch was claimed again, with the
# events beside it. (96 inputs of 10,000 characters are ~2.4 million tokens.)
_INT_FIELDS = {"inputs": 2**31 - 1, "tokens": 2**31 - 1, "cached": 2**31 - 1}
_COST_MAX = Decimal(10) ** 16
_COMPUTE_MS_MAX = 1e12
_KINDS = frozenset(UsageRecord.Kind.values)


@dataclass
class BulkOutcome:
    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[Any, str]] = field(default_factory=list)


@dataclass(slots=True)
class LedgerRow:
    """A ledger row to insert, under ``UsageRecord``'s attribute names (a model instance
    costs ~11 us to build, a fifth of the consumer's work an event; nothing here needs one)."""

    event_id: str
    kind: str
    tenant_id: str
    api_key_id: str
    livemode: bool
    model: str
    compute_ms: float
    worker: str
    cost_micros: Decimal
    pool: str
    occurred_at: datetime
    inputs: int
    tokens: int
    cached: int
    recorded_at: datetime | None = None
    plan_id: str = ""  # the event's (the plan the call was admitted under), else set on write
    # A correcting row's (``metering.corrections``); never set from a usage event.
    corrects: str = ""
    reason: str = ""
    corrected_by: str = ""


_foreign_pools: set[tuple[str, str]] = set()


def _in_cost_currency(cost: Decimal, event: dict[str, Any]) -> Decimal:
    """``cost`` where the event prices it in ``COST_CURRENCY`` (or does not say: an older
    worker), else nothing and an error, once a process for each pool and currency. Margins
    and the simulator add every row's cost as that one currency: a pool priced in yen had
    its micro-yen added in as dollars (an audit). The Workers page shows such a pool."""
    currency = str(event.get("cost_currency") or "").strip().lower()
    if not currency or currency == settings.COST_CURRENCY:
        return cost
    pool = str(event.get("pool", ""))[:64]
    if (pool, currency) not in _foreign_pools:
        _foreign_pools.add((pool, currency))
        logger.error(
            "worker pool %r prices its hardware in %s, but COST_CURRENCY is %s: its calls' "
            "cost is recorded as 0 (set WORKER_CURRENCY=%s there, with its price in it)",
            pool, currency, settings.COST_CURRENCY, settings.COST_CURRENCY,
        )  # fmt: skip
    return Decimal(0)


def _parse(event: Any) -> tuple[LedgerRow | None, str]:
    """A ledger row from a usage event, or None and why it is unusable."""
    if not isinstance(event, dict):
        return None, "not an object"
    try:
        occurred = parse_datetime(event["occurred_at"])
        if occurred is None or occurred.tzinfo is None:
            return None, "occurred_at is not an aware ISO 8601 datetime"
        if event["kind"] not in _KINDS:
            return None, f"unknown kind {event['kind']!r}"
        ints = {name: event[name] for name in _INT_FIELDS}
        if any(
            not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _INT_FIELDS[name]
            for name, v in ints.items()
        ):
            return None, "inputs, tokens and cached must be non-negative integers in range"
        compute_ms = float(event["compute_ms"])
        if not math.isfinite(compute_ms) or not 0 <= compute_ms <= _COMPUTE_MS_MAX:
            return None, "compute_ms is not a non-negative number in range"
        cost = Decimal(str(event.get("cost_micros", "0")))
        if not cost.is_finite() or not 0 <= cost < _COST_MAX:
            return None, "cost_micros is not a non-negative decimal in range"
        cost = _in_cost_currency(cost, event)
        return LedgerRow(
            event_id=str(event["event_id"])[:64],
            kind=event["kind"],
            tenant_id=str(event["tenant_id"]),
            api_key_id=str(event["api_key_id"])[:32],
            livemode=bool(event["livemode"]),
            model=str(event["model"])[:200],
            compute_ms=compute_ms,
            worker=str(event.get("worker", ""))[:200],
            cost_micros=cost.quantize(Decimal("0.0001")),
            pool=str(event.get("pool", ""))[:64],
            occurred_at=occurred,
            plan_id=str(event.get("plan_id") or "")[:64],
            **ints,
        ), ""
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return None, f"malformed event: {exc!r}"


def usage_record_bulk(*, events: list[UsageEvent] | list[Any]) -> BulkOutcome:
    """Append usage events to the ledger in one transaction. A redelivered event (same
    event id) is a no-op; a malformed one or one for an unknown tenant is rejected, so one
    poison message never blocks the rest."""
    outcome = BulkOutcome()
    rows: dict[str, LedgerRow] = {}
    # Each row's event as it came: a rejection after parsing dead-letters the event itself,
    # which an operator can replay, not just its id (the stream entry is deleted).
    sources: dict[str, Any] = {}
    for event in events:
        row, why = _parse(event)
        if row is None:
            outcome.rejected.append((event, why))
        elif row.event_id in rows:
            outcome.duplicates += 1
        else:
            rows[row.event_id] = row
            sources[row.event_id] = event
    if not rows:
        return outcome
    tenant_ids = {row.tenant_id for row in rows.values()}
    known = set(Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", flat=True))
    for event_id, row in list(rows.items()):
        if row.tenant_id not in known:
            outcome.rejected.append((sources[event_id], f"unknown tenant {row.tenant_id!r}"))
            del rows[event_id]
    with transaction.atomic():
        # NOTE: one INSERT that skips ids already stored and names the rows that went in,
        # not bulk_create(ignore_conflicts=True) after a SELECT of the stored ids: that
        # pair was half of the usage consumer's CPU (py-spy, cache hits under 32 clients),
        # 54 us an event by time.process_time against 27 us now (LedgerRow included).
        now = timezone.now()
        plans = tenant_plans_now(known)
        stamped = plans_known({row.plan_id for row in rows.values() if row.plan_id})
        for row in rows.values():
            row.recorded_at = now  # what auto_now_add would set
            # The plan the call was admitted under; else (an event from before events
            # carried it, a fine-tune, a plan this database lacks) the tenant's plan now.
            if row.plan_id not in stamped:
                row.plan_id = plans[row.tenant_id]
        with skip_stored():  # (PostgreSQL's ledger: stored ids skipped by its trigger)
            inserted = insert_new(UsageRecord, list(rows.values()), unique="event_id")
        fresh = [row for event_id, row in rows.items() if event_id in inserted]
        # Margin reports read daily rollups, kept in the same transaction as the ledger.
        rollup_apply(rows=fresh)
    _past_billing_report(fresh, now)
    outcome.inserted = len(fresh)
    outcome.duplicates += len(rows) - len(fresh)
    return outcome


def _past_billing_report(rows: list[LedgerRow], now: datetime) -> None:
    """Say so of live usage stored after its period's late pushes ended (a consumer down
    for a week, a dead letter replayed late): it is in the ledger and the usage reports,
    and no push or reconciliation will ever look at it. Only events older than the horizon
    are looked into (rare): their period is read for each."""
    cutoff = now - LATE_USAGE_HORIZON
    old = [row for row in rows if row.occurred_at < cutoff and row.livemode]
    if not old:
        return
    tenants = Tenant.objects.in_bulk({row.tenant_id for row in old})
    for row in old:
        start, end = period_of(tenant=tenants[row.tenant_id], moment=row.occurred_at)
        if now - end >= LATE_USAGE_HORIZON:
            USAGE_PAST_BILLING.inc()
            logger.warning(
                "usage event %s of tenant %s (%s inputs, %s) stored %s after its billing period"
                " %s to %s stopped being pushed: never billed; bill or credit it by hand",
                row.event_id, row.tenant_id, row.inputs, row.kind, now - end,
                start.isoformat(), end.isoformat(),
            )  # fmt: skip

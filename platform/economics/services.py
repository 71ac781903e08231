"""Keeping the usage rollups in step with the ledger."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Count, F, Max, Q, Sum, Value
from django.db.models.functions import Coalesce, Greatest, TruncDate

from billing.models import Subscription
from limits.services import free_plan_current
from metering.models import UsageRecord
from plans.models import Plan

if TYPE_CHECKING:
    from metering.services import LedgerRow

from .models import UNKEYED, RollupsUnkeyed, UsageRollup

logger = logging.getLogger(__name__)
GRAIN = ("day", "tenant_id", "model", "kind", "livemode", "plan_id", "api_key_id")


def tenant_plans_now(tenant_ids: set[str]) -> dict[str, str]:
    """Each tenant's plan version now. A tenant without a subscription is on the current free
    version: the plan enforcement admitted its calls under, so they are stamped with it."""
    subs = Subscription.objects.unscoped().filter(tenant_id__in=tenant_ids)
    plans = dict(subs.values_list("tenant_id", "plan_id"))
    if plans.keys() >= tenant_ids:
        return plans
    # NOTE: enforcement's own lookup, re-read at most every few seconds: the usage consumer
    # calls this once a batch, and free's version changes about never.
    free = free_plan_current().id
    return {tenant_id: plans.get(tenant_id, free) for tenant_id in tenant_ids}


_plans_seen: set[str] = set()


def plans_known(plan_ids: set[str]) -> set[str]:
    """Those of ``plan_ids`` that are plan versions here. A version is never deleted (rows
    refer to it), so one seen once is remembered: a query only for ids not seen before."""
    unseen = plan_ids - _plans_seen
    if unseen:
        _plans_seen.update(Plan.objects.filter(pk__in=unseen).values_list("pk", flat=True))
    return plan_ids & _plans_seen


def rollup_apply(*, rows: Iterable[LedgerRow]) -> None:
    """Add freshly inserted ledger rows, stamped with their plan, to the rollups (call
    inside their transaction)."""
    rows = list(rows)
    if not rows:
        return
    keyed = _keyed()
    sums: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "inputs": 0, "cached": 0, "tokens": 0, "compute_ms": 0.0,
                 "cost_micros": Decimal(0)}
    )  # fmt: skip
    last: dict[tuple[Any, ...], datetime] = {}
    for row in rows:
        # NOTE: the UTC day, as the ledger's (TruncDate) and /v1/usage's: an event may carry
        # any offset, and its local date can be the day after (or before).
        grain = (row.occurred_at.astimezone(UTC).date(), row.tenant_id, row.model, row.kind,
                 row.livemode, row.plan_id, row.api_key_id if keyed else UNKEYED)  # fmt: skip
        s = sums[grain]
        # A correcting row (metering.corrections) nets its event's quantities out of the
        # same grain; it is not a call: the event stays counted as the call it was made.
        s["requests"] += 0 if row.corrects else 1
        s["inputs"] += row.inputs
        s["cached"] += row.cached
        s["tokens"] += row.tokens
        s["compute_ms"] += row.compute_ms
        s["cost_micros"] += Decimal(row.cost_micros)
        last[grain] = max(last.get(grain, row.occurred_at), row.occurred_at)
    with transaction.atomic():
        # In one order for every writer (the grain's): two consumers' batches that share
        # rows lock them in the same order, where each batch's own order deadlocked them.
        for grain, s in sorted(sums.items()):
            key: dict[str, Any] = dict(zip(GRAIN, grain, strict=True))
            netting = min(s["inputs"], s["cached"], s["tokens"]) < 0
            if _added(key, s, last[grain], netting):
                continue
            if netting:
                # A correction of rows the rollups never had (a ledger restored without a
                # rebuild): nothing to net it from; a rebuild counts both.
                logger.warning("rollups lack the rows a correction nets (%s): run "
                               "rebuild_rollups", grain)  # fmt: skip
                continue
            # The grain's row made empty unless a writer made it first (ON CONFLICT DO
            # NOTHING waits for that writer's transaction), then added to: two consumers'
            # first calls of a day each made it, and the second's batch failed whole.
            UsageRollup.objects.bulk_create([UsageRollup(**key)], ignore_conflicts=True)
            if not _added(key, s, last[grain], netting):
                raise RuntimeError(f"rollup row {grain} neither made nor found")


def _keyed() -> bool:
    """Whether rows are written keyed (``RollupsUnkeyed`` absent): after an upgrade, until
    ``rebuild_rollups``, the release before may still write its six-column grain. On
    PostgreSQL the flag is read under a KEY SHARE lock (one probe of a one-row table; none
    once it is gone): a rebuild deletes it first, so it waits for the writers that read it
    here, and the writers after wait for the rebuild and find it gone (a writer that read
    it before a rebuild wrote an unkeyed row after it)."""
    if connection.vendor != "postgresql":
        return not RollupsUnkeyed.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {RollupsUnkeyed._meta.db_table} FOR KEY SHARE")  # noqa: S608 - a model's table
        return cursor.fetchone() is None


def _added(key: dict[str, Any], sums: dict[str, Any], latest: datetime, netting: bool) -> bool:
    """Whether ``sums`` went into the existing rollup of ``key``. A correction (``netting``)
    goes into a row that holds at least what it takes away: its own key's, or, for an event
    summed before the key was in the grain, its grain's unkeyed row (which holds it)."""
    rows = UsageRollup.objects.for_tenant(key["tenant_id"])
    if netting:
        rows = rows.filter(inputs__gte=-sums["inputs"], cached__gte=-sums["cached"],
                           tokens__gte=-sums["tokens"])  # fmt: skip
    keys = [key["api_key_id"], UNKEYED] if netting and key["api_key_id"] != UNKEYED else []
    for api_key_id in keys or [key["api_key_id"]]:
        updated = rows.filter(**{**key, "api_key_id": api_key_id}).update(
            **{name: F(name) + value for name, value in sums.items()},
            # Coalesce: SQLite's greatest of a null is null.
            last_at=Greatest(Coalesce(F("last_at"), Value(latest)), Value(latest)),
        )
        if updated:
            return True
    return False


@transaction.atomic
def rollups_rebuild() -> int:
    """Recompute every rollup from the ledger (after a restore, or to correct drift), under
    the plan each row was recorded on (rows from before plans were recorded: the tenant's
    plan now), and the API key: rows summed before the key was in the grain come out keyed.

    On PostgreSQL the rollups table is locked against writes first: a ledger row whose
    transaction was still open when the ledger was read (the consumer's, a void's) adds
    itself to the rebuilt rollups once this commits, instead of to a deleted row (a void's
    netting was then lost until the next rebuild, and the consumer's batch failed on the
    rebuilt row's uniqueness). Writers wait for the rebuild meanwhile. Every row comes out
    keyed, and rows are written keyed from then on: the flag that says otherwise
    (``RollupsUnkeyed``, economics 0004) is deleted first, before the lock (``_keyed``)."""
    RollupsUnkeyed.objects.all().delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # (SHARE ROW EXCLUSIVE: taken after the writers already in the table commit,
            # and holding off the others' ROW EXCLUSIVE; reads go on)
            cursor.execute(f"LOCK TABLE {UsageRollup._meta.db_table} IN SHARE ROW EXCLUSIVE MODE")
    UsageRollup.objects.unscoped().delete()
    ledger = (
        UsageRecord.objects.unscoped()
        .annotate(day=TruncDate("occurred_at"))
        .values("day", "tenant_id", "model", "kind", "livemode", "plan_id", "api_key_id")
        .annotate(
            requests=Count("id", filter=Q(corrects="")), inputs=Sum("inputs"), cached=Sum("cached"),
            tokens=Sum("tokens"), compute_ms=Sum("compute_ms"), cost_micros=Sum("cost_micros"),
            last_at=Max("occurred_at"),
        )
    )  # fmt: skip
    groups = list(ledger)
    plans = tenant_plans_now({g["tenant_id"] for g in groups if not g["plan_id"]})
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for g in groups:
        g["plan_id"] = g["plan_id"] or plans[g["tenant_id"]]
        grain = tuple(g[name] for name in GRAIN)
        if grain in merged:  # stamped and unstamped rows of one plan: one rollup
            for name in ("requests", "inputs", "cached", "tokens", "compute_ms", "cost_micros"):
                merged[grain][name] += g[name]
            merged[grain]["last_at"] = max(merged[grain]["last_at"], g["last_at"])
        else:
            merged[grain] = g
    UsageRollup.objects.bulk_create([UsageRollup(**g) for g in merged.values()], batch_size=1000)
    return len(merged)

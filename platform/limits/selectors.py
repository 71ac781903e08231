"""Reads behind the quota: what the ledger says a period's counter should hold."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Sum

from metering.models import UsageRecord


def quota_ledger_inputs(
    *, tenant_id: str, period_start: datetime, period_end: datetime, livemode: bool
) -> int:
    """The inputs of the tenant's classifications in the ledger this period, live or test
    mode (each has its own counter, ``services.quota_key``): what reconciliation raises a
    counter to, and what admission seeds a missing one with."""
    return int(
        UsageRecord.objects.for_tenant(tenant_id).filter(
            livemode=livemode, kind=UsageRecord.Kind.INFERENCE,
            occurred_at__gte=period_start, occurred_at__lt=period_end,
        ).aggregate(n=Sum("inputs"))["n"] or 0
    )  # fmt: skip

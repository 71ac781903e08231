"""Reading the usage ledger for customers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate

from tenants.models import Tenant

from .models import UsageRecord

GROUP_FIELDS = {"day": "day", "model": "model", "api_key": "api_key_id"}
CURRENCY = "usd"


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": row["requests"] or 0,
        "inputs": row["inputs"] or 0,
        "tokens": row["tokens"] or 0,
        "compute_ms": round(row["compute_ms"] or 0.0, 3),
        # NOTE: rating lands with billing; until then usage is reported at zero price.
        "amount": 0,
        "currency": CURRENCY,
    }


def usage_summary(
    *, tenant: Tenant, livemode: bool, start: datetime, end: datetime, group_by: str
) -> dict[str, Any]:
    records = UsageRecord.objects.for_tenant(tenant).filter(
        livemode=livemode, occurred_at__gte=start, occurred_at__lt=end
    )
    sums = {
        "requests": Count("id"),
        "inputs": Sum("inputs"),
        "tokens": Sum("tokens"),
        "compute_ms": Sum("compute_ms"),
    }
    key = GROUP_FIELDS[group_by]
    grouped = records.annotate(day=TruncDate("occurred_at")) if group_by == "day" else records
    rows = grouped.values(group=F(key)).annotate(**sums).order_by("group")
    data = [{group_by: str(row["group"]), **_metrics(row)} for row in rows]
    return {
        "object": "usage",
        "start": start,
        "end": end,
        "group_by": group_by,
        "currency": CURRENCY,
        "data": data,
        "total": _metrics(records.aggregate(**sums)),
    }

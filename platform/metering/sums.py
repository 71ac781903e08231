"""A tenant's usage summed over a time range, for the reports and the rating that customers
and billing read on every call (``/v1/usage``, the upcoming invoice, the usage pushes).

Whole UTC days come from the daily rollups (``economics.UsageRollup``), which the usage
consumer and a void keep in the same transaction as the ledger rows they sum; only the part
days at the range's ends are read from the ledger itself. A month of a busy tenant is then
a few dozen rollup rows and at most two days of its calls, where it was every call of the
month: a scale audit measured 4-11 s for one ``/v1/usage`` call of a tenant with 2.4
million calls in three months, its ledger partitions read whole, ~14 times a call.

``from_ledger`` reads the whole range from the ledger: what the usage pushes send to Stripe
and reconciliation checks it against (DESIGN: reported to Stripe = the sum of the ledger),
so rollups that drifted from the ledger (a restore without ``rebuild_rollups``) never reach
an invoice; reconciliation says when they have (``billing.reconciliation``).

Grouping is by any of ``GROUPS``, all of which the rollups hold. Rollups summed before the
API key was part of their grain have none (``""``, any key's usage): a report by key reads
the whole days up to the last of those from the ledger (``_keyed_from``) until
``rebuild_rollups`` has keyed them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate

from economics.models import UNKEYED, RollupsUnkeyed, UsageRollup
from tenants.models import Tenant

from .models import UsageRecord

GROUPS = ("day", "model", "kind", "plan_id", "api_key_id")  # (the rollups hold them all)
SUMS = ("requests", "inputs", "cached", "tokens", "compute_ms")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _whole_days(start: datetime, end: datetime) -> tuple[date, date] | None:
    """The UTC days [first, last) that lie wholly inside [start, end), if any."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first = start.date()
    if start != _midnight(first):
        if first == date.max:  # (a range ending at the end of time: no whole day in it)
            return None
        first += timedelta(1)
    last = end.date()
    return (first, last) if first < last else None


def _from_ledger(
    tenant: Tenant | str, livemode: bool, start: datetime, end: datetime, by: Sequence[str]
) -> list[dict[str, Any]]:
    records = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(livemode=livemode, occurred_at__gte=start, occurred_at__lt=end)
        .exclude(kind=UsageRecord.Kind.COMPUTE)
    )  # (a cost, never usage: the model's docs)
    if "day" in by:
        records = records.annotate(day=TruncDate("occurred_at"))
    sums = {
        # Calls made: a voided call was made all the same; its correcting row is not one.
        "requests": Count("id", filter=Q(corrects="")),
        **{name: Sum(name) for name in SUMS if name != "requests"},
    }
    return _grouped(records, by, sums)


def _grouped(rows: Any, by: Sequence[str], sums: dict[str, Any]) -> list[dict[str, Any]]:
    if not by:  # (values() without names would group by every column)
        return [rows.aggregate(**sums)]
    return list(rows.values(*by).annotate(**sums))


# Tenants whose ledger holds no row without a plan. None is written any more (the consumer
# stamps every row, a void copies its event's plan), so a tenant found without one stays so:
# asked once a process, not on each of the dozen sums a usage report makes (an index probe,
# but ~16 ms of planning over a year of monthly partitions each time).
_STAMPED: set[str] = set()


def _unstamped(tenant: Tenant | str, livemode: bool, start: datetime, end: datetime) -> bool:
    """Whether the range holds ledger rows from before rows recorded their plan (an empty
    ``plan_id``, which rating prices under the plan it is given). Their rollups carry the
    plan stamped when they were summed, which may be another: such a range is read from the
    ledger alone, so that a row is priced the same whichever way it is read. (Index probes:
    ``usage_plan``.)"""
    tenant_id = tenant if isinstance(tenant, str) else str(tenant.pk)
    if tenant_id in _STAMPED:
        return False
    unstamped = UsageRecord.objects.for_tenant(tenant).filter(plan_id="")
    if not unstamped.exists():
        _STAMPED.add(tenant_id)
        return False
    return unstamped.filter(livemode=livemode, occurred_at__gte=start, occurred_at__lt=end).exists()


# Tenants without unkeyed rollups, once rows are written keyed (``RollupsUnkeyed`` absent:
# a new install, or after ``rebuild_rollups``, which keys them all): none is written then,
# so it is asked once a process, as ``_STAMPED``. While rows are written unkeyed (after an
# upgrade, until the rebuild), a tenant without any may have some a moment later: asked
# each time.
_KEYED: set[str] = set()


def _keyed_from(tenant: Tenant | str, livemode: bool, first: date, last: date) -> date:
    """The first of the whole days [first, last) from which the tenant's rollups all know
    their key: the day after the last one that holds an unkeyed rollup (it holds any key's
    usage), else ``first``. (Index probes: ``rollup_unkeyed``.)"""
    tenant_id = tenant if isinstance(tenant, str) else str(tenant.pk)
    if tenant_id in _KEYED:
        return first
    unkeyed = UsageRollup.objects.for_tenant(tenant).filter(api_key_id=UNKEYED)
    if not unkeyed.exists():
        if not RollupsUnkeyed.objects.exists():
            _KEYED.add(tenant_id)
        return first
    in_range = unkeyed.filter(livemode=livemode, day__gte=first, day__lt=last)
    latest = in_range.order_by("-day").values_list("day", flat=True).first()
    return first if latest is None else latest + timedelta(1)


def _from_rollups(
    tenant: Tenant | str, livemode: bool, first: date, last: date, by: Sequence[str]
) -> list[dict[str, Any]]:
    rollups = (
        UsageRollup.objects.for_tenant(tenant)
        .filter(livemode=livemode, day__gte=first, day__lt=last)
        .exclude(kind=UsageRecord.Kind.COMPUTE)
    )
    return _grouped(rollups, by, {name: Sum(name) for name in SUMS})


def usage_sums(
    *,
    tenant: Tenant | str,
    livemode: bool,
    start: datetime,
    end: datetime,
    by: Sequence[str] = (),
    from_ledger: bool = False,
) -> list[dict[str, Any]]:
    """The usage of [start, end) grouped by ``by`` (names of ``GROUPS``): one dict per group
    with its values and ``SUMS`` (numbers, never None), net of ledger corrections. Groups
    with nothing in the range are left out; ``by=()`` gives one row (zeros for none)."""
    unknown = set(by) - set(GROUPS)
    if unknown:
        raise ValueError(f"cannot group usage by {sorted(unknown)}")
    days = None if from_ledger else _whole_days(start, end)
    if days is not None and "plan_id" in by and _unstamped(tenant, livemode, start, end):
        days = None
    if days is not None and "api_key_id" in by:
        first, last = days
        keyed = _keyed_from(tenant, livemode, first, last)
        days = (keyed, last) if keyed < last else None
    if days is None:
        parts = [_from_ledger(tenant, livemode, start, end, by)]
    else:
        first, last = days
        parts = [
            _from_ledger(tenant, livemode, start, _midnight(first), by),
            _from_rollups(tenant, livemode, first, last, by),
            _from_ledger(tenant, livemode, _midnight(last), end, by),
        ]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in parts:
        for row in rows:  # (an aggregate of nothing has None sums: they add nothing)
            group = tuple(row[name] for name in by)
            into = merged.setdefault(
                group, {**dict(zip(by, group, strict=True)), **dict.fromkeys(SUMS, 0)}
            )
            for name in SUMS:
                into[name] += row[name] or 0
    if not by and not merged:
        return [dict.fromkeys(SUMS, 0)]
    for row in merged.values():
        row["compute_ms"] = float(row["compute_ms"])
        for name in ("requests", "inputs", "cached", "tokens"):
            row[name] = int(row[name])
    return list(merged.values())

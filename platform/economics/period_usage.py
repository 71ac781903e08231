"""Usage revenue of the margins pages and the simulator, rated per billing period as
billing rates it (``billing.rating.rate_tenant_period``, ``billing.usage_pricing``).

Each tenant's rollup rows are grouped by the billing period they fall in: its recorded
periods (``billing.BillingPeriod``; Stripe's may begin on any day: the 17th, the 29th at
14:32), and, between and around them, calendar months cut where they meet a recorded one,
as ``billing.periods.billing_periods`` fills them. A tenant with no period recorded in the
months read keeps calendar months. Each period's rows are rated together, each by the plan
it was made on, past the period's included inputs: every plan's share of its own by the
time on it, pooled (``plan_months.Spans.shares``, ``billing.rating.pooled``; none recorded:
each plan's whole allowance on its own usage), and a range is charged the marginal
charge of its rows in their period: the period rated up to the range's last day minus rated
up to its first, the period rated as one though it runs over two calendar months. So
adjacent ranges add up to the whole exactly, and a range's usage charge is what /v1/usage
says for it.

NOTE: rollups are daily, billing rates each call at its own instant, so a day a period
boundary splits (a period beginning at 14:32) cannot be split as billing splits it. A
rollup row goes to the period its latest call was made in (``UsageRollup.last_at``): exact
for a row whose calls are all on one side of the boundary (a plan change at the boundary
gives each side rows of its own), and a row with calls on both sides goes whole to the
later period. A row without ``last_at`` (from before it was kept) is taken at its day's
last instant: the later period too."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cache
from typing import NamedTuple

from billing.periods import months
from billing.rating import Allowance, PlanUsage, pooled, rate_usage
from billing.usage_pricing import allocate, line_key
from plans.models import Plan

from .plan_months import Recorded


class Row(NamedTuple):
    """A rollup row as the pages read it: a day's rows of one grain summed over their API
    keys (``selectors._keys_summed``; ``pk`` its first row's id), or a base fee's (no usage,
    ``pk`` 0). A tuple, not a model instance: the pages read hundreds of thousands."""

    pk: int
    day: date
    tenant_id: str
    model: str
    kind: str
    livemode: bool
    plan_id: str
    last_at: datetime | None = None
    requests: int = 0
    inputs: int = 0
    cached: int = 0
    tokens: int = 0
    cost_micros: Decimal | int = 0


@dataclass(frozen=True)
class UsagePeriod:
    """A billing period, and each plan's share of its included inputs (None: every plan's
    whole; a plan absent from a dict: none)."""

    start: datetime
    end: datetime
    shares: dict[str, Fraction] | None


class TenantPeriods:
    """One tenant's billing periods: its recorded ones that reach into the months read, in
    order, and calendar months cut where they meet one, between and around them."""

    def __init__(self, book: Recorded, tenant_id: str, lo: datetime) -> None:
        self.lo = lo
        spans = book.spans.get(tenant_id)
        self.recorded = [
            UsagePeriod(period.start, period.end, spans.shares(period) if spans else None)
            for period in book.periods.get(tenant_id, [])
            if period.end > lo  # (not one read for its fee alone: it holds no usage read)
        ]
        self.starts = [period.start for period in self.recorded]
        # Without a recorded period a row's period is its day's calendar month: once a month.
        self._months: dict[tuple[int, int], UsagePeriod | None] = {}

    def of(self, day: date, last_at: datetime | None) -> UsagePeriod | None:
        """The period a row of ``day`` whose latest call was at ``last_at`` is rated in
        (module NOTE); None where it ends before the months read (a row read only for a
        recorded period that began before them)."""
        if not self.recorded:  # calendar months, as before periods were recorded
            month = (day.year, day.month)
            if month not in self._months:
                self._months[month] = self._of(datetime.combine(day, time(), tzinfo=UTC))
            return self._months[month]
        day_end = datetime.combine(day, time.max, tzinfo=UTC)
        return self._of(day_end if last_at is None else min(last_at, day_end))

    def _of(self, at: datetime) -> UsagePeriod | None:
        i = bisect_right(self.starts, at) - 1
        if i >= 0 and at < self.recorded[i].end:
            return self.recorded[i]
        first = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        _, following = next(months(first, first + timedelta(days=1)))
        if i >= 0:
            first = max(first, self.recorded[i].end)
        if i + 1 < len(self.recorded):
            following = min(following, self.recorded[i + 1].start)
        return UsagePeriod(first, following, None) if following > self.lo else None


def read_from(book: Recorded, lo: datetime) -> dict[str, date]:
    """Per tenant whose rows a page reads from before the months' first day, that day: the
    start of its recorded period running into them (its rows before them count against its
    included inputs). Per tenant: one tenant's annual period made every tenant's rows of
    eleven months read."""
    early: dict[str, date] = {}
    for tenant_id, periods in book.periods.items():
        starts = [p.start for p in periods if p.end > lo and p.start < lo]
        if starts:
            early[tenant_id] = min(starts).date()
    return early


_line_key = cache(line_key)  # (a model's tier is parsed from its id: once a model)


def quantity(row: Row, plan: Plan) -> tuple[str, int]:
    """The charge line a rollup row counts towards under ``plan``, and by how much:
    billable inputs (cached ones only where the plan bills them), or trained tokens."""
    key = _line_key(row.kind, row.model)
    if row.kind != "inference":
        return key, row.tokens
    billable = row.inputs - (0 if plan.cached_results_billed else row.cached)
    return key, max(billable, 0)


def _charges(
    usage: dict[str, PlanUsage], allowance: Allowance | None, plans: Callable[[str], Plan]
) -> dict[tuple[str, str], int]:
    """(plan id, charge line key) -> minor units for rows rated together (``usage``: their
    quantities by the plan they were made on), past the period's included inputs
    (``allowance``: ``rating.pooled``), base fee excluded (it is earned by time)."""
    if not usage:
        return {}
    segments = {plans(plan_id): made_on for plan_id, made_on in usage.items()}
    rated = rate_usage(segments, allowance)
    return {(plan.id, line.key): line.amount for plan, lines in rated.items() for line in lines}


def _add(usage: dict[str, PlanUsage], plan_id: str, key: str, count: int) -> None:
    made_on = usage.get(plan_id)
    if made_on is None:  # (not setdefault: a PlanUsage built for every row)
        made_on = usage[plan_id] = PlanUsage()
    made_on.add(key, count)


def _marginal(
    rows: list[Row], plans: Callable[[str], Plan], period: UsagePeriod, days: tuple[date, date]
) -> dict[int, int]:
    """Minor units per row in the range (by id): of one tenant's rows in one period, the
    marginal charge of those in the range (the period rated up to the range's last day minus
    rated up to its first), each (plan, line) shared by its rows' quantities."""
    first, last = days
    through: dict[str, PlanUsage] = {}
    before: dict[str, PlanUsage] = {}
    quantities: dict[int, tuple[tuple[str, str], int]] = {}
    inputs: dict[int, int] = {}
    for row in rows:  # (one pass: each row's quantity once)
        if row.day > last:
            continue
        key, count = quantity(row, plans(row.plan_id))
        _add(through, row.plan_id, key, count)
        if row.day < first:
            _add(before, row.plan_id, key, count)
        else:
            quantities[row.pk] = ((row.plan_id, key), count)
            inputs[row.pk] = row.inputs
    allowance = pooled(period.shares, plans)
    charges = _charges(through, allowance, plans)
    earlier = _charges(before, allowance, plans)
    revenue: dict[int, int] = dict.fromkeys(inputs, 0)
    for line, amount in charges.items():
        amount -= earlier.get(line, 0)  # lines only grow with usage: never < 0
        weights = {pk: q for pk, (k, q) in quantities.items() if k == line}
        if not any(weights.values()):
            # NOTE: a line can grow without a row of its own in the range: dearer inputs in
            # the range take the included inputs that cheaper ones before it had (of the
            # same plan or another's), so the cheaper line grows. The range's inputs made
            # it grow.
            weights = inputs
        if not any(weights.values()):
            weights = dict.fromkeys(inputs, 1)
        for pk, part in allocate(amount, weights).items():
            revenue[pk] += part
    return revenue


def usage_revenue(
    rows: list[Row],
    book: Recorded,
    lo: datetime,
    days: tuple[date, date],
    plans: Callable[[str], Plan],
) -> dict[int, int]:
    """Minor units of usage revenue of each row in the range of days (by id), ``rows``
    being every live row of the months read, from ``lo`` (and, for a tenant with a recorded
    period running into them, from its start: ``read_from``)."""
    tenants: dict[str, TenantPeriods] = {}
    groups: dict[tuple[str, datetime], list[Row]] = defaultdict(list)
    period_of: dict[tuple[str, datetime], UsagePeriod] = {}
    for row in rows:
        if row.kind == "compute":  # a cost, never billed (metering.models)
            continue
        periods = tenants.get(row.tenant_id)
        if periods is None:
            periods = tenants[row.tenant_id] = TenantPeriods(book, row.tenant_id, lo)
        period = periods.of(row.day, row.last_at)
        if period is not None:
            period_of[(row.tenant_id, period.start)] = period
            groups[(row.tenant_id, period.start)].append(row)
    revenue: dict[int, int] = {}
    for tenant_period, group in groups.items():
        if any(days[0] <= row.day <= days[1] for row in group):
            revenue.update(_marginal(group, plans, period_of[tenant_period], days))
    return revenue

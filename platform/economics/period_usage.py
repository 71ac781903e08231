"""Usage revenue of the margins pages and the simulator, rated per billing period as
billing rates it (``billing.rating.rate_tenant_period``, ``billing.usage_pricing``).

Each tenant's rollup rows are grouped by the billing period they fall in: its recorded
periods (``billing.BillingPeriod``; Stripe's may begin on any day: the 17th, the 29th at
14:32), and, between and around them, calendar months cut where they meet a recorded one,
as ``billing.periods.billing_periods`` fills them. A tenant with no period recorded in the
months read keeps calendar months. Each period's rows on one plan are rated together with
that plan's share of the period's included inputs (``plan_months.Spans.shares``, billing's
``plan_shares``; none recorded: the whole allowance), and a range is charged the marginal
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
from billing.rating import rate
from billing.usage_pricing import allocate, line_key
from plans.models import MODEL_TIERS, Plan

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

    def share(self, plan_id: str) -> Fraction | None:
        return None if self.shares is None else self.shares.get(plan_id, Fraction(0))


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


class _Usage:
    """Billable inputs by tier and trained tokens of some rows (``quantity``), and whether
    there were any."""

    def __init__(self) -> None:
        self.inputs: dict[str, int] = dict.fromkeys(MODEL_TIERS, 0)
        self.tokens = 0
        self.rows = 0

    def add(self, key: str, count: int) -> None:
        self.rows += 1
        if key.startswith("usage:"):
            self.inputs[key.removeprefix("usage:")] += count
        else:
            self.tokens += count


def _charges(usage: _Usage, plan: Plan, period: UsagePeriod) -> dict[str, int]:
    """Charge line key -> minor units for rows rated together under ``plan`` (``usage``
    their quantities), with its share of the period's included inputs, base fee excluded
    (it is earned by time)."""
    if not usage.rows:
        return {}
    rated = rate(plan=plan, inputs_by_tier=usage.inputs, trained_tokens=usage.tokens,
                 period_start=period.start, period_end=period.end, include_base_fee=False,
                 share=period.share(plan.id))  # fmt: skip
    return {line.key: line.amount for line in rated.lines}


def _marginal(
    rows: list[Row], plan: Plan, period: UsagePeriod, days: tuple[date, date]
) -> dict[int, int]:
    """Minor units per row in the range (by id): of one period's rows made on ``plan``, the
    marginal charge of those in the range (the period rated up to the range's last day minus
    rated up to its first), each line shared by its quantity."""
    first, last = days
    through, before = _Usage(), _Usage()
    quantities: dict[int, tuple[str, int]] = {}
    inputs: dict[int, int] = {}
    for row in rows:  # (one pass: each row's quantity once)
        if row.day > last:
            continue
        key, count = quantity(row, plan)
        through.add(key, count)
        if row.day < first:
            before.add(key, count)
        else:
            quantities[row.pk] = (key, count)
            inputs[row.pk] = row.inputs
    charges = _charges(through, plan, period)
    earlier = _charges(before, plan, period)
    revenue: dict[int, int] = dict.fromkeys(inputs, 0)
    for key, amount in charges.items():
        amount -= earlier.get(key, 0)  # lines only grow with usage: never < 0
        weights = {pk: q for pk, (k, q) in quantities.items() if k == key}
        if not any(weights.values()):
            # NOTE: a line can grow without a row of its own in the range: dearer inputs in
            # the range take the included inputs that cheaper ones before it had, so the
            # cheaper tier's line grows. The range's inputs made it grow.
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
    groups: dict[tuple[str, datetime, str], list[Row]] = defaultdict(list)
    period_of: dict[tuple[str, datetime], UsagePeriod] = {}
    for row in rows:
        periods = tenants.get(row.tenant_id)
        if periods is None:
            periods = tenants[row.tenant_id] = TenantPeriods(book, row.tenant_id, lo)
        period = periods.of(row.day, row.last_at)
        if period is not None:
            period_of[(row.tenant_id, period.start)] = period
            groups[(row.tenant_id, period.start, row.plan_id)].append(row)
    revenue: dict[int, int] = {}
    for (tenant_id, start, plan_id), group in groups.items():
        if any(days[0] <= row.day <= days[1] for row in group):
            period = period_of[(tenant_id, start)]
            revenue.update(_marginal(group, plans(plan_id), period, days))
    return revenue

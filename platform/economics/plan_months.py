"""The plans of each tenant-month, as billing counts them: which plans' base fees a month
earns; and the billing periods and plan spans they are read from, which also share each
period's included inputs between its plans (``Spans.shares``, billing's ``plan_shares``
read in bulk: ``economics.period_usage`` rates usage per period with them).

A tenant-month is *shared* where billing shares its periods' included inputs
(``billing.periods.plan_shares``): every billing period overlapping the month (its
scheduled length included) has a plan span at or before its start, and its spans end it on
the plan it was recorded on. Then a plan's base fee is earned for its time in the month,
over the month's length (as a range's share of a month's fee was before: a whole month on a
plan earns its fee, the 17th-anchored renewals included): from each of its spans to the
next, and, where a move to free cut its period short (``BillingPeriod.scheduled_end``), to
where the period was to end, the fee of the rest not being credited. That rest may overlap
free's time, as Stripe charged both.
NOTE: the fee is earned by calendar month, not billing period, on purpose: it is revenue
earned by time on the plan (a day of pro earns the same in October and November), which
over whole periods adds up to what Stripe charged; only its daily rate differs from
Stripe's proration (a month's length, not the period's). Usage is another matter: included
inputs are granted per period, so it is rated per period.

Elsewhere (periods from before spans were kept, spans that disagree with the periods) a
month's fees are counted by *runs*, as before spans: a base fee for each run of a plan's
paid periods overlapping the month (``Runs``)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction

from django.db.models import Q

from billing.models import BillingPeriod, PlanSpan
from billing.periods import cut_shares, months
from billing.usage_pricing import allocate
from core.moments import LAST_INSTANT
from plans.models import Plan

MICROSECOND = timedelta(microseconds=1)
ONE_DAY = timedelta(days=1)
Month = tuple[datetime, datetime]
Interval = tuple[datetime, datetime]
MonthKey = tuple[str, date]  # (tenant id, the month's first day)


def _days(lo: datetime, hi: datetime) -> list[tuple[date, datetime, datetime]]:
    """Each UTC day [lo, hi) touches, with its part of [lo, hi)."""
    out = []
    cursor = lo
    while cursor < hi:
        midnight = datetime.combine(cursor.date(), time(), tzinfo=UTC)
        # (Not midnight + 1 day where hi comes first: after 9999-12-31 there is none.)
        following = hi if hi - midnight <= ONE_DAY else midnight + ONE_DAY
        out.append((cursor.date(), cursor, following))
        cursor = following
    return out


def _earned(amount: int, month: Month, moment: datetime, covered: int | None = None) -> int:
    """The part of a month's fee earned from the month's start to ``moment`` (or for
    ``covered`` microseconds of it): exact in integer microseconds, rounded half-up to the
    minor unit once."""
    moment = min(max(moment, month[0]), month[1])
    length = (month[1] - month[0]) // MICROSECOND
    covered = (moment - month[0]) // MICROSECOND if covered is None else covered
    whole, rest = divmod(amount * covered, length)
    return whole + int(2 * rest >= length)


def prorated(amount: int, month: Month, start: datetime, end: datetime) -> int:
    """A month's fee for the part of the month that [start, end) covers: the fee earned by
    the range's end minus that earned by its start. Adjacent ranges therefore add up to the
    month's fee exactly (4,900 over three 10-day ranges of a 30-day month: 1,633 + 1,634
    + 1,633), each within a minor unit of its exact share."""
    return _earned(amount, month, end) - _earned(amount, month, start)


@dataclass(frozen=True)
class Runs:
    """A month priced as before spans were kept: ``fees`` says how many base fees each plan
    pays (``fee_payers``)."""

    fees: Counter[str]

    def plans(self) -> list[str]:
        return list(self.fees)

    def fee(self, plan: Plan, month: Month, start: datetime, end: datetime) -> int:
        return self.fees.get(plan.id, 0) * prorated(plan.base_fee, month, start, end)

    def fee_days(
        self, plan: Plan, month: Month, start: datetime, end: datetime
    ) -> list[tuple[date, int]]:
        """The plan's fees in [start, end), spread evenly over the days of it in the month."""
        if not plan.base_fee:
            return []
        days = [d for d, _, _ in _days(max(start, month[0]), min(end, month[1]))]
        return list(allocate(self.fee(plan, month, start, end), dict.fromkeys(days, 1)).items())


@dataclass
class Shared:
    """A month whose plans billing knows from spans: each plan's time in the month
    (intervals within it; a plan's may overlap)."""

    time: dict[str, list[Interval]] = field(default_factory=lambda: defaultdict(list))

    def plans(self) -> list[str]:
        return list(self.time)

    def _earned(self, plan: Plan, month: Month, moment: datetime) -> int:
        covered = sum(
            (min(hi, moment) - lo) // MICROSECOND
            for lo, hi in self.time.get(plan.id, ())
            if lo < moment
        )
        return _earned(plan.base_fee, month, moment, covered)

    def fee(self, plan: Plan, month: Month, start: datetime, end: datetime) -> int:
        """The plan's fee for its time in [start, end): earned by the range's end minus
        earned by its start, so adjacent ranges add up to the month's exactly."""
        return self._earned(plan, month, end) - self._earned(plan, month, start)

    def fee_days(
        self, plan: Plan, month: Month, start: datetime, end: datetime
    ) -> list[tuple[date, int]]:
        """The plan's fee in [start, end) by the day it was earned (days on it alone)."""
        out = []
        for day, lo, hi in _days(max(start, month[0]), min(end, month[1])):
            if part := self.fee(plan, month, lo, hi):
                out.append((day, part))
        return out


@dataclass(frozen=True)
class Period:
    """A recorded billing period (``billing.BillingPeriod``)."""

    start: datetime
    end: datetime
    scheduled_end: datetime  # its end, unless a move to free cut it short
    plan_id: str


class Spans:
    """One tenant's plan spans, in order."""

    def __init__(self, rows: list[tuple[datetime, str]]) -> None:
        self.starts = [start for start, _ in rows]
        self.plans = [plan_id for _, plan_id in rows]

    def cuts(self, period: Period) -> list[tuple[datetime, str]] | None:
        """(since, plan) through the period, as ``plan_shares`` cuts it: the plan it began
        on, then each span inside it. None where no span begins at or before it."""
        first = bisect_right(self.starts, period.start)
        if not first:
            return None
        last = bisect_left(self.starts, period.end)
        inside = zip(self.starts[first:last], self.plans[first:last], strict=True)
        return [(period.start, self.plans[first - 1]), *inside]

    def shares(self, period: Period) -> dict[str, Fraction] | None:
        """Plan id -> its share of the period's included inputs, as ``plan_shares`` has it
        (a plan absent had no time there: none of them); None where billing gives every
        plan its whole allowance (no span at or before the period's start)."""
        cuts = self.cuts(period)
        if cuts is None or period.scheduled_end <= period.start:  # (empty: holds no usage)
            return None
        return cut_shares(cuts, period.scheduled_end)

    def time(self, month: Month) -> list[tuple[str, Interval]]:
        """(plan, interval) for each span's time within the month."""
        out = []
        first = max(bisect_right(self.starts, month[0]) - 1, 0)
        for i in range(first, bisect_left(self.starts, month[1])):
            until = self.starts[i + 1] if i + 1 < len(self.starts) else LAST_INSTANT
            lo, hi = max(self.starts[i], month[0]), min(until, month[1])
            if lo < hi:
                out.append((self.plans[i], (lo, hi)))
        return out


def _free(plan_id: str) -> bool:
    """Whether a plan version's id (``free@2``) is one of the free plan's."""
    return plan_id.partition("@")[0] == "free"


def _shared(periods: list[Period], spans: Spans, month: Month) -> Shared | None:
    """The month's time on each plan from its periods and spans; None where billing does not
    share the periods' included inputs (or the spans disagree with them)."""
    cut = {period: spans.cuts(period) for period in periods}
    if any(c is None or c[-1][1] != period.plan_id for period, c in cut.items()):
        return None
    shared = Shared()
    for plan_id, interval in spans.time(month):
        shared.time[plan_id].append(interval)
    for period, cuts in cut.items():
        assert cuts is not None  # (checked above)
        rest = (max(period.end, month[0]), min(period.scheduled_end, month[1]))
        # Cut short by a move to free: the rest is the last plan's (its fee was paid ahead).
        # NOTE: not a free period's, cut short by a move to a paid plan: its rest is that
        # plan's own period (a proposed fee for free was charged for the whole month, and
        # the time counted twice: an audit).
        if rest[0] < rest[1] and not _free(cuts[-1][1]):
            shared.time[cuts[-1][1]].append(rest)
    return shared


@dataclass(frozen=True)
class Recorded:
    """The billing periods (in order) and plan spans of each tenant with periods in the
    months read: what billing knows of its plans."""

    periods: dict[str, list[Period]]
    spans: dict[str, Spans]


def recorded(months_touched: list[Month]) -> Recorded:
    """The periods reaching into the months touched (ended, or scheduled to end, after
    their start), and every plan span of their tenants before their end: two queries."""
    lo, hi = months_touched[0][0], months_touched[-1][1]
    periods = BillingPeriod.objects.unscoped().filter(
        Q(end__gt=lo) | Q(scheduled_end__gt=lo), start__lt=hi
    )
    rows = periods.order_by("tenant_id", "start").values_list(
        "tenant_id", "start", "end", "scheduled_end", "plan_id"
    )
    by_tenant: dict[str, list[Period]] = defaultdict(list)
    for tenant_id, start, end, scheduled_end, plan_id in rows:
        by_tenant[tenant_id].append(Period(start, end, scheduled_end or end, plan_id))
    span_rows: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    # NOTE: to the end of the last period read, not of the range: a period reaching past the
    # range shares its included inputs by every change in it, as billing does (read only to
    # the range's end, a change after it left the old plan its whole allowance and its
    # month's fee was the new plan's whole one, an audit found).
    reach = max([hi, *(max(p.end, p.scheduled_end) for ps in by_tenant.values() for p in ps)])
    spans = PlanSpan.objects.unscoped().filter(
        start__lt=reach, tenant_id__in=periods.values("tenant_id")
    )
    for tenant_id, start, plan_id in spans.order_by("tenant_id", "start").values_list(
        "tenant_id", "start", "plan_id"
    ):
        span_rows[tenant_id].append((start, plan_id))
    return Recorded(dict(by_tenant), {t: Spans(span_rows.get(t, [])) for t in by_tenant})


def month_terms(months_touched: list[Month], book: Recorded) -> dict[MonthKey, Runs | Shared]:
    """(tenant, month) -> how the month's base fees are counted, for each tenant with
    billing periods recorded in the months touched."""
    lo, hi = months_touched[0][0], months_touched[-1][1]
    payers = fee_payers(book.periods, lo, hi)
    bounds = {month[0].date(): month for month in months_touched}
    terms: dict[MonthKey, Runs | Shared] = {}
    for tenant_id, tenant_periods in book.periods.items():
        by_month: dict[date, list[Period]] = defaultdict(list)
        for period in tenant_periods:
            reach = max(period.end, period.scheduled_end)
            for first, _ in months(max(period.start, lo), min(reach, hi)):
                by_month[first.date()].append(period)
        for month_start, overlapping in by_month.items():
            shared = _shared(overlapping, book.spans[tenant_id], bounds[month_start])
            key = (tenant_id, month_start)
            if shared is not None:
                terms[key] = shared
            elif key in payers:
                terms[key] = Runs(payers[key])
    return terms


def fee_payers(
    by_tenant: dict[str, list[Period]], lo: datetime, hi: datetime
) -> dict[MonthKey, Counter[str]]:
    """(tenant, month) -> plan -> how many base fees the plan pays that month, before spans.

    A plan pays one fee a month for each run of its periods overlapping the month (periods
    of one plan that follow one another: a subscription renewing). So a period cut short
    the day it began (pro on the 29th, free again that afternoon: Stripe charged pro) pays
    its month's fee, and a plan left and subscribed to again within a month pays twice, as
    Stripe charged it twice. Free periods are counted too: a month with periods recorded
    and none paid pays nothing, whatever its calls were made on."""
    payers: dict[MonthKey, Counter[str]] = defaultdict(Counter)
    for tenant_id, periods in by_tenant.items():
        previous: dict[MonthKey, tuple[datetime, str]] = {}  # the month's last (end, plan)
        for period in periods:
            if period.start >= period.end or period.end <= lo:
                continue
            for month_start, _ in months(max(period.start, lo), min(period.end, hi)):
                key = (tenant_id, month_start.date())
                if previous.get(key) != (period.start, period.plan_id):  # not a renewal
                    payers[key][period.plan_id] += 1
                previous[key] = (period.end, period.plan_id)
    return payers

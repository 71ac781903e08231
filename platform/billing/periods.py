"""Billing periods as they were: what a plan's included inputs cover.

A paid subscription's periods are Stripe's, anchored on the moment it began (the 29th to the
29th, say); free runs calendar months. Usage is priced per period, as the invoice prices
it, so a usage report agrees with the invoice wherever the period does not begin on the
1st. Periods are recorded as subscriptions set them; where none is recorded (usage from
before recording began), calendar months stand in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import MAXYEAR, UTC, datetime, timedelta
from fractions import Fraction

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.moments import LAST_INSTANT, utc_clamped
from plans.models import Plan
from tenants.models import Tenant

from .models import BillingPeriod, Invoice, PlanSpan, Subscription

# How long after its end a period is still pushed to Stripe, each hour (``billing.tasks``):
# usage that reached the ledger late, or a correction of it, still goes.
LATE_USAGE_HORIZON = timedelta(days=7)


def calendar_month(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def monthly_periods_after(
    start: datetime, end: datetime, moment: datetime
) -> tuple[datetime, datetime]:
    """The period ``moment`` falls in, of the monthly periods a Stripe subscription's
    [start, end) renews into: each ends on the anchor's day of the month (clamped to the
    month's last day, as Stripe does: the 31st, then the 28th of February, then the 31st),
    at the same time of day. The anchor's day is the end's, or the start's where the end
    fell on its month's last day short of it (a period that ended on the 28th of February
    began on the 31st or the 29th, say); a first period of another length (a trial) ends on
    the anchor itself."""
    anchor = end.day
    if start.day > end.day and end.day == _last_day(end.year, end.month):
        anchor = start.day
    while moment >= end:
        start, end = end, _month_after(end, anchor)
    return start, end


def _last_day(year: int, month: int) -> int:
    return (datetime(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day


def _month_after(moment: datetime, anchor: int) -> datetime:
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.replace(year=year, month=month, day=min(anchor, _last_day(year, month)))


def free_period_from(moment: datetime) -> tuple[datetime, datetime]:
    """The period of a tenant that leaves a paid plan for free at ``moment``: from then to
    the end of its calendar month (then calendar months). Usage before it was billed with
    the paid plan on its final invoice, and must neither show on free's upcoming invoice
    nor count against free's quota."""
    return moment, calendar_month(moment)[1]


def months(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The UTC calendar months that [start, end) touches, as (first instant, next month's
    first instant); December 9999 ends at datetime's last instant."""
    cursor = utc_clamped(start).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while cursor < end:
        if cursor.month < 12:
            following = cursor.replace(month=cursor.month + 1)
        elif cursor.year < MAXYEAR:
            following = cursor.replace(year=cursor.year + 1, month=1)
        else:
            yield cursor, LAST_INSTANT
            return
        yield cursor, following
        cursor = following


def billed_currency(*, tenant: Tenant) -> str | None:
    """The currency the tenant has been billed in (its periods on plans with a base fee,
    the latest), or None if never: an account keeps its charges in one currency."""
    latest = (
        BillingPeriod.objects.for_tenant(tenant)
        .filter(plan__base_fee__gt=0)
        .order_by("-start")
        .values_list("plan__currency", flat=True)
        .first()
    )
    return str(latest) if latest else None


@transaction.atomic
def billing_period_record(*, sub: Subscription) -> None:
    """Record the subscription's current period. One that began earlier and runs past this
    one's start ends there (a plan change or cancellation cut it short); one recorded as
    beginning inside this one is replaced by it."""
    start, end = sub.current_period_start, sub.current_period_end
    periods = BillingPeriod.objects.for_tenant(sub.tenant_id)
    # (SET reads the row as it was: the end it had becomes its scheduled end, once.)
    periods.filter(start__lt=start, end__gt=start).update(
        scheduled_end=Coalesce(F("scheduled_end"), F("end")), end=start
    )
    periods.filter(start__gt=start, start__lt=end).delete()
    periods.update_or_create(
        tenant_id=sub.tenant_id, start=start, defaults={"end": end, "plan_id": sub.plan_id}
    )
    spans = PlanSpan.objects.for_tenant(sub.tenant_id)
    if not spans.exists():  # a new tenant's first period: on its plan from its start
        spans.create(tenant_id=sub.tenant_id, start=start, plan_id=sub.plan_id)


def billing_periods(
    *, tenant: Tenant, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """The whole periods that [start, end) touches, in order: recorded ones, and calendar
    months (cut where they meet a recorded one) where none is recorded."""
    periods = BillingPeriod.objects.for_tenant(tenant)
    recorded = (
        periods.filter(start__lt=end, end__gt=start).order_by("start").values_list("start", "end")
    )
    # Where the last recorded period before the range ended: a month filled in after it
    # begins there, not on the 1st (a renewal not yet recorded must not re-price usage that
    # the period before it covered).
    cursor: datetime | None = (
        periods.filter(end__lte=start).order_by("-end").values_list("end", flat=True).first()
    )
    lo = start
    for period_start, period_end in recorded:
        if lo < period_start:
            yield from _months_between(lo, period_start, after=cursor, before=period_start)
        yield period_start, period_end
        lo = cursor = period_end
    if lo < end:
        yield from _months_between(lo, end, after=cursor, before=None)


def _months_between(
    lo: datetime, hi: datetime, *, after: datetime | None, before: datetime | None
) -> Iterator[tuple[datetime, datetime]]:
    """Calendar months touching [lo, hi), cut to begin no earlier than ``after`` and end no
    later than ``before`` (the recorded periods either side, if any)."""
    for month_start, month_end in months(lo, hi):
        first = max(month_start, after) if after else month_start
        last = min(month_end, before) if before else month_end
        if first < last:
            yield first, last


def period_of(*, tenant: Tenant, moment: datetime) -> tuple[datetime, datetime]:
    """The billing period ``moment`` falls in (recorded, else a calendar month cut where it
    meets a recorded one), as ``billing_periods`` gives it."""
    return next(billing_periods(tenant=tenant, start=moment, end=moment + _MICROSECOND))


def period_open(*, tenant: Tenant, moment: datetime, now: datetime | None = None) -> bool:
    """Whether the usage of the billing period ``moment`` falls in may still change what the
    tenant is billed (a ledger correction): the period is in progress, or it ended less than
    ``LATE_USAGE_HORIZON`` ago (its pushes still run, so a change reaches Stripe) and no
    finalised invoice of the tenant covers its end (mirrored from Stripe's webhooks: a
    renewal's invoice covers the period it closes). Once it is invoiced, a change is a
    credit note in Stripe, not a ledger row. A paid period cut short (a move to free, a
    cancellation) is closed from the cut: cancelling invoiced it then, before any webhook
    says so, and a credit pushed after it waits on a customer with no subscription."""
    now = now or timezone.now()
    start, end = period_of(tenant=tenant, moment=moment)
    if end > now:
        return True
    if now - end >= LATE_USAGE_HORIZON:
        return False
    cut = BillingPeriod.objects.for_tenant(tenant).filter(
        start=start, scheduled_end__isnull=False, plan__base_fee__gt=0
    )
    if cut.exists():
        return False
    # NOTE: an invoice that closes the period ends in its second half, not exactly at its
    # end: a period cut short here (a move to free) ends when this side heard of the cancel
    # (after Stripe's call returned, or its webhook came), and its final invoice's
    # period_end is Stripe's moment of the cancel, before that; the invoiced period read as
    # open. A renewal's invoice ends at the end; the invoice that opened the period (its
    # first) and the one before end at its start.
    middle = start + (end - start) / 2
    return not Invoice.objects.for_tenant(tenant).filter(period_end__gt=middle).exists()


def period_recorded(*, tenant: Tenant, sub: Subscription, start: datetime) -> tuple[datetime, Plan]:
    """Where the period that begins at ``start`` ends, and the plan it ended on (its
    currency; the price of rows made before plans were recorded): the current one's, or a
    past one's as recorded (else the current one's, as before periods were recorded)."""
    if start != sub.current_period_start:
        recorded = (
            BillingPeriod.objects.for_tenant(tenant)
            .filter(start=start)
            .select_related("plan")
            .first()
        )
        if recorded is not None:
            return recorded.end, recorded.plan
    return sub.current_period_end, sub.plan


_MICROSECOND = timedelta(microseconds=1)


def plan_span_record(
    *,
    sub: Subscription,
    was: str,
    was_since: datetime,
    new_period: bool,
    at: datetime | None = None,
) -> None:
    """After ``sub`` changed plans, from ``was`` (on it at least since ``was_since``, its
    period's start): the time on each plan, which shares the period's included inputs
    (``plan_shares``). A change that began a new period (a new Stripe subscription, a move
    to free: ``new_period``) counts from that period's start, a change of the subscription
    within its period from ``at`` (when it happened, where that is known: a change made in
    Stripe, by its event's time) or now. Call in the transaction that saves the change.

    Every tenant has a span from its first period (``billing_period_record``), or from the
    deploy that began keeping them (migration 0007: a period in progress then has no span
    at or before its start, and stays priced as it was: every plan's allowance whole)."""
    if sub.plan_id == was:
        return
    spans = PlanSpan.objects.for_tenant(sub.tenant_id)
    now = timezone.now()
    since = sub.current_period_start if new_period else min(at or now, now)
    latest = spans.order_by("-start").values_list("start", flat=True).first()
    if latest is None:  # (a row 0007 missed: as 0007 would have, from now)
        spans.create(tenant_id=sub.tenant_id, start=now, plan_id=was)
    elif not new_period:
        since = max(since, latest)  # (an event's whole seconds: not before what it ends)
    spans.filter(start__gt=since).delete()  # (replaced: a new period that began earlier)
    spans.update_or_create(tenant_id=sub.tenant_id, start=since, defaults={"plan_id": sub.plan_id})


def plan_shares(*, tenant: Tenant | str, start: datetime) -> dict[str, Fraction]:
    """Plan id -> its share of the recorded period that begins at ``start``: the time the
    tenant was on it there, over the period's length (as scheduled: a period cut short by a
    move to free counts its cut-off rest as the last plan's time). Empty where the period is
    not recorded or no span begins at or before it (every plan's included inputs whole, as
    before spans were kept); a plan absent from a non-empty answer had no time in the
    period (usage made on it that landed there brings none of its inputs to the period's:
    ``rating.pooled``)."""
    periods = BillingPeriod.objects.for_tenant(tenant).filter(start=start)
    bounds = periods.values_list("end", "scheduled_end").first()
    if bounds is None:
        return {}
    # Spans up to where the period ended (the move that cut it began the next one), its
    # last plan's time to where it was to end.
    end: datetime = bounds[1] or bounds[0]
    spans = PlanSpan.objects.for_tenant(tenant).filter(start__lt=bounds[0])
    before = spans.filter(start__lte=start).order_by("-start").values_list("plan_id").first()
    if before is None:
        return {}
    cuts = [(start, before[0])]
    cuts += list(spans.filter(start__gt=start).order_by("start").values_list("start", "plan_id"))
    return cut_shares(cuts, end)


def cut_shares(cuts: list[tuple[datetime, str]], end: datetime) -> dict[str, Fraction]:
    """Plan id -> its share of a period cut into ``cuts`` ((since, plan) from the period's
    start, in order) that ends at ``end``: each plan's time over the period's length (also
    the margins pages', ``economics.plan_months``, from spans they read in bulk)."""
    length = (end - cuts[0][0]) // _MICROSECOND
    shares: dict[str, Fraction] = {}
    for (since, plan_id), (until, _) in zip(cuts, [*cuts[1:], (end, "")], strict=True):
        share = Fraction((until - since) // _MICROSECOND, length)
        shares[plan_id] = shares.get(plan_id, Fraction(0)) + share
    return shares

"""What the margins page, the pricing simulator and ``simulate_pricing`` accept (whole UTC
days, price tables the rating engine can price), and the simulator's report as text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Q

from core.parsers import DuplicateName, unique_names
from plans.models import Plan
from plans.terms import (
    MONEY_TERMS,
    price_terms_check,
    unbilled_charges_check,
    uncapped_overage_check,
)

from . import messages
from .selectors import pricing_simulate

EDITABLE = {
    "base_fee", "included_inputs", "overage_tiers", "finetune_unit_amount",
    "cached_results_billed",
}  # fmt: skip
MAX_RANGE_YEARS = 10
# NOTE: every range is read month by month from the rollups; ten years (leap days
# included) is more than an operator compares and keeps a page view to a few seconds.
MAX_RANGE = timedelta(days=365 * MAX_RANGE_YEARS + 3)


def moment_parse(text: str) -> datetime:
    """An ISO 8601 date or datetime; with an offset it is converted to UTC (not relabelled),
    without one it is UTC. ValueError when it is neither, or falls outside the years
    datetime holds once in UTC (9999-12-31T23:00-05:00)."""
    moment = datetime.fromisoformat(text.strip())
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(messages.OUT_OF_CALENDAR.format(value=text)) from None


def day_parse(text: str) -> datetime:
    """A whole UTC day (a date, or a datetime at 00:00 UTC) as its first instant; else a
    ValueError that says so. Margins read daily UTC rollups: a range with a time of day
    would count whole days of usage against a base fee prorated to the microsecond."""
    try:
        moment = moment_parse(text)
    except ValueError as exc:
        raise ValueError(messages.DATE_FORMAT.format(problem=exc)) from None
    if moment != moment.replace(hour=0, minute=0, second=0, microsecond=0):
        raise ValueError(messages.NOT_A_WHOLE_DAY.format(value=text))
    return moment


def range_check(start: datetime, end: datetime) -> None:
    """ValueError unless [start, end) runs forwards and spans at most MAX_RANGE_YEARS."""
    if start >= end:
        raise ValueError(messages.RANGE_BACKWARDS)
    if end - start > MAX_RANGE:
        raise ValueError(
            messages.RANGE_TOO_LONG.format(
                years=MAX_RANGE_YEARS, start=start.date().isoformat(), end=end.date().isoformat()
            )
        )


def prices_parse(text: str) -> dict[str, dict[str, Any]]:
    """A price table as JSON text, validated (``proposed_validate``); ValueError naming
    what is wrong."""
    try:
        proposed = json.loads(text, object_pairs_hook=unique_names)
    except DuplicateName as exc:  # json keeps the last, silently: which one was meant?
        raise ValueError(messages.PRICES_DUPLICATE.format(name=exc.name)) from None
    except RecursionError:  # e.g. 50,000 nested arrays: json's parser recurses
        raise ValueError(messages.PRICES_TOO_DEEP) from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise ValueError(messages.PRICES_NOT_JSON.format(problem=exc)) from None
    return proposed_validate(proposed)


def proposed_validate(proposed: Any) -> dict[str, dict[str, Any]]:
    """Raise ValueError naming what is wrong; return the overrides by plan slug (every version
    of the plan) or plan version (``pro@1``: its tenants alone), checked by the plans app's
    own rules (``plans.terms.price_terms_check``, bounds included)."""
    if not isinstance(proposed, dict):
        raise ValueError(messages.PRICES_NOT_OBJECT)
    # A slug's cap is its current version's, or its latest's for a plan retired since (its
    # tenants of a past period are repriced by its slug too): the current one comes last.
    plans = Plan.objects.order_by("is_current", "version")
    caps = dict(plans.values_list("slug", "monthly_hard_cap"))
    # NOTE: a slug reprices every version of its plan: a table of the current terms then
    # moved tenants still on an older version (an audit). A version names its tenants alone.
    versions = [key for key in proposed if isinstance(key, str) and "@" in key]
    caps.update(Plan.objects.filter(pk__in=versions).values_list("pk", "monthly_hard_cap"))
    for slug, terms in proposed.items():
        if slug not in caps:
            raise ValueError(messages.PRICES_UNKNOWN_PLAN.format(slug=slug))
        if not isinstance(terms, dict) or not set(terms) <= EDITABLE:
            editable = sorted(EDITABLE)
            raise ValueError(messages.PRICES_NOT_EDITABLE.format(slug=slug, editable=editable))
        try:
            proposed[slug] = price_terms_check(terms)
            if "overage_tiers" in terms:
                uncapped_overage_check(terms["overage_tiers"], capped=caps[slug] is not None)
        except ValidationError as exc:
            field, problems = next(iter(exc.message_dict.items()))
            raise ValueError(f"{slug}.{field}: {problems[0]}") from None
    _billable_check(proposed)
    return proposed


def _billable_check(proposed: dict[str, dict[str, Any]]) -> None:
    """As the admin refuses them (``unbilled_charges_check``): terms that charge on a plan
    without a base fee, which is never billed. The simulator counted such charges (13.60 USD
    from a free tenant) as revenue that Stripe could never collect (an audit)."""
    named = Plan.objects.filter(Q(slug__in=proposed) | Q(pk__in=proposed))
    for plan in named:
        terms = {name: getattr(plan, name) for name in MONEY_TERMS}
        for key in (plan.slug, plan.pk):
            terms.update(proposed.get(key, {}))
        try:
            unbilled_charges_check(terms, plan)
        except ValidationError as exc:
            field, problems = next(iter(exc.message_dict.items()))
            raise ValueError(f"{plan.pk}.{field}: {problems[0]}") from None


def simulation_report(
    *, start: datetime, end: datetime, proposed: dict[str, dict[str, Any]]
) -> str:
    """The simulation as text. NOTE: amounts that pass the plans app's checks and still
    overflow the rating engine's Decimal arithmetic are a ValueError saying so, not a
    traceback."""
    try:
        return format_report(pricing_simulate(start=start, end=end, proposed=proposed))
    except ArithmeticError as exc:  # decimal.InvalidOperation, Overflow; OverflowError
        raise ValueError(messages.PRICES_UNPRICEABLE.format(problem=exc)) from None


def money(micros: Decimal | int | None) -> str:
    """Micro-units as currency units: four decimals, and three significant digits below a
    hundredth (a tenant's cost of a few calls is a few micro-dollars), never "-0"."""
    if micros is None:
        return "n/a"
    value = Decimal(micros) / Decimal(1_000_000)
    if not value:
        return "0"
    if abs(value) >= Decimal("0.01"):
        return f"{value:,.4f}"
    return f"{value:.{2 - value.adjusted()}f}"


def _tenant(line: dict[str, Any]) -> str:
    name = line["name"] if len(line["name"]) <= 30 else f"{line['name'][:29]}…"
    return f"{name} ({line['tenant']})" if name else line["tenant"]


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"pricing simulation {report['start'].date().isoformat()} .."
        f" {report['end'].date().isoformat()} "
        f"(currency units: revenue in the plan's, cost in {report['cost_currency']})",
        f"{'tenant':44} {'plan':10} {'cur':4} {'revenue':>14} {'simulated':>14} "
        f"{'cost':>14} {'margin':>14} {'sim. margin':>14}",
    ]
    rows = [(f"TOTAL {currency}", "", t) for currency, t in report["totals"].items()]
    rows += [(_tenant(t), t["plan"], t) for t in report["tenants"].values()]
    if not rows:  # (the header alone read as a report cut short)
        lines.append(messages.NO_USAGE)
    notes = []
    for label, plan, t in rows:
        lines.append(
            f"{label:44} {plan:10} {t['currency']:4} {money(t['actual_revenue_micros']):>14} "
            f"{money(t['simulated_revenue_micros']):>14} {money(t['cost_micros']):>14} "
            f"{money(t['actual_margin_micros']):>14} {money(t['simulated_margin_micros']):>14}"
        )
        if t["no_margin"] and t["no_margin"] not in notes:
            notes.append(t["no_margin"])
    return "\n".join(lines + [f"note: {note}" for note in notes])

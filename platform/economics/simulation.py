"""Proposed price tables: validated before they are simulated, and reports as text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError

from plans.models import Plan
from plans.terms import price_terms_check

EDITABLE = {
    "base_fee", "included_inputs", "overage_tiers", "finetune_unit_amount",
    "cached_results_billed",
}  # fmt: skip


def moment_parse(text: str) -> datetime:
    """An ISO 8601 date or datetime; with an offset it is converted to UTC (not relabelled),
    without one it is UTC. ValueError when it is neither."""
    moment = datetime.fromisoformat(text.strip())
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def proposed_validate(proposed: Any) -> dict[str, dict[str, Any]]:
    """Raise ValueError naming what is wrong; return the overrides by plan slug."""
    if not isinstance(proposed, dict):
        raise ValueError("the price table must be a JSON object keyed by plan slug")
    known = set(Plan.objects.filter(is_current=True).values_list("slug", flat=True))
    for slug, terms in proposed.items():
        if slug not in known:
            raise ValueError(f"unknown plan {slug!r}")
        if not isinstance(terms, dict) or not set(terms) <= EDITABLE:
            raise ValueError(f"{slug}: only {sorted(EDITABLE)} can be proposed")
        try:
            proposed[slug] = price_terms_check(terms)
        except ValidationError as exc:
            field, problems = next(iter(exc.message_dict.items()))
            raise ValueError(f"{slug}.{field}: {problems[0]}") from None
    return proposed


def _money(micros: Decimal | int) -> str:
    return f"{Decimal(micros) / Decimal(1_000_000):,.4f}"


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"pricing simulation {report['start']:%Y-%m-%d} .. {report['end']:%Y-%m-%d} "
        "(currency units)",
        f"{'tenant':24} {'plan':10} {'revenue':>12} {'simulated':>12} {'cost':>12} "
        f"{'margin':>12} {'sim. margin':>12}",
    ]
    rows = [("TOTAL", "", report["total"])] + [
        (tenant, t["plan"], t) for tenant, t in sorted(report["tenants"].items())
    ]
    for tenant, plan, t in rows:
        lines.append(
            f"{tenant:24} {plan:10} {_money(t['actual_revenue_micros']):>12} "
            f"{_money(t['simulated_revenue_micros']):>12} {_money(t['cost_micros']):>12} "
            f"{_money(t['actual_margin_micros']):>12} {_money(t['simulated_margin_micros']):>12}"
        )
    return "\n".join(lines)

"""Report sums kept apart per currency, and the margins taken from them.

Revenue is in each plan's currency and cost in the currency the workers price their
hardware in: a report keeps one line per revenue currency (its total too), never adds
amounts of two currencies, and takes a margin only where revenue and cost are in the same
one; elsewhere it shows both and says why there is no margin."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.conf import settings

from . import messages
from .period_usage import Row

# UsageRollup.kind, as the ledger's (``COMPUTE``: a fine-tune that did not succeed)
INFERENCE, FINE_TUNE, COMPUTE = "inference", "fine_tune", "compute"
# What a margins line adds up: classifications and fine-tuning apart (a fine-tune job is
# not a call, nor its training examples inputs), live cost (of which fine-tuning, failed and
# cancelled jobs' included), and the test-mode cost that operators pay for and nobody is
# billed for.
USAGE = ("requests", "inputs", "finetunes", "trained_tokens")
MONEY = ("revenue_micros", "finetune_revenue_micros", "cost_micros", "finetune_cost_micros",
         "test_cost_micros")  # fmt: skip
SIMULATED = ("actual_revenue_micros", "simulated_revenue_micros", "cost_micros")


def cost_currency() -> str:
    """The currency compute cost is in. NOTE: a usage event carries ``cost_micros`` but not
    its currency: the workers price their hardware in their WORKER_CURRENCY, which the
    operator states to the platform as ``COST_CURRENCY`` (usd unless set)."""
    return str(settings.COST_CURRENCY)


def margin_sums() -> dict[str, Any]:
    return {**dict.fromkeys(USAGE, 0), "revenue_micros": 0, "finetune_revenue_micros": 0,
            **{name: Decimal(0) for name in MONEY[2:]}}  # fmt: skip


def usage_add(sums: dict[str, Any], row: Row, revenue_micros: int) -> None:
    """A live rollup row (or a base fee's) and its revenue, into a margins line."""
    cost = Decimal(row.cost_micros)
    if row.kind == INFERENCE:
        sums["requests"] += row.requests
        sums["inputs"] += row.inputs
    elif row.kind == FINE_TUNE:
        sums["finetunes"] += row.requests
        sums["trained_tokens"] += row.tokens
        sums["finetune_cost_micros"] += cost
        sums["finetune_revenue_micros"] += revenue_micros
    elif row.kind == COMPUTE:  # (its revenue is 0: never billed)
        sums["finetune_cost_micros"] += cost
    sums["revenue_micros"] += revenue_micros
    sums["cost_micros"] += cost


def margin_fill(sums: dict[str, Any]) -> dict[str, Any]:
    """``sums`` (of one revenue ``currency``) with its margin, margin %, and cost per
    classification; no margin where revenue and cost are in two currencies."""
    costs_in = cost_currency()
    classifying = sums["cost_micros"] - sums["finetune_cost_micros"]
    sums["cost_currency"] = costs_in
    sums["cost_per_call_micros"] = classifying / sums["requests"] if sums["requests"] else None
    sums["margin_micros"] = sums["margin_pct"] = sums["margin_per_call_micros"] = None
    sums["no_margin"] = ""
    if sums["currency"] != costs_in:
        sums["no_margin"] = messages.NO_MARGIN_OTHER_CURRENCY.format(
            currency=sums["currency"], cost_currency=costs_in
        )
        return sums
    margin = Decimal(sums["revenue_micros"]) - sums["cost_micros"]
    sums["margin_micros"] = margin
    if sums["requests"]:
        # A classification's: the revenue and cost of fine-tuning left out (a plan's base
        # fee is shared among classifications alone).
        finetuning = sums["finetune_revenue_micros"] - sums["finetune_cost_micros"]
        sums["margin_per_call_micros"] = (margin - finetuning) / sums["requests"]
    if sums["revenue_micros"]:
        sums["margin_pct"] = margin / sums["revenue_micros"] * 100
    return sums


def simulated_margin_fill(sums: dict[str, Any]) -> dict[str, Any]:
    """A simulator line (of one revenue ``currency``) with its actual and simulated
    margins; none where revenue and cost are in two currencies."""
    costs_in = cost_currency()
    same = sums["currency"] == costs_in
    for which in ("actual", "simulated"):
        margin = sums[f"{which}_revenue_micros"] - sums["cost_micros"]
        sums[f"{which}_margin_micros"] = margin if same else None
    sums["no_margin"] = "" if same else messages.NO_MARGIN_OTHER_CURRENCY.format(
        currency=sums["currency"], cost_currency=costs_in
    )  # fmt: skip
    return sums


def by_currency(lines: Iterable[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """Currency -> ``names`` summed over the ``lines`` in that revenue currency, the cost
    currency first."""
    totals: dict[str, dict[str, Any]] = {}
    for line in lines:
        total = totals.setdefault(line["currency"], {"currency": line["currency"]})
        for name in names:
            total[name] = total.get(name, 0) + line[name]
    first = cost_currency()
    return dict(sorted(totals.items(), key=lambda item: (item[0] != first, item[0])))

"""The rating engine: the usage ledger of a period, priced by a plan.

Pure arithmetic on integers and Decimals (never floats): included inputs first (applied to
the dearest tier first, in the customer's favour), then graduated overage per model tier,
then fine-tuning per 1,000 trained tokens. Amounts are rounded half-up to whole minor units
once per line, so the lines always add up to the total that is invoiced.

A period in which the tenant changed plans prices each ledger row by the plan it was made on
(``UsageRecord.plan_id``), past one pool of included inputs: each plan's share by time of
its own (``periods.plan_shares``), together, covering the period's usage on every plan,
dearest first (``pooled``). So a move up or a price cut never raises the charge for usage
already made (with each plan's share covering only the usage made on it, a move up 26
seconds into the period left the inputs made before it past 26 seconds' worth of pro's
allowance), and a move down shrinks the pool only as far as the fee given back."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from metering.models import UsageRecord
from metering.sums import usage_sums
from plans.models import MODEL_TIERS, Plan
from tenants.models import Tenant

from .periods import plan_shares

PER = Decimal(1000)


def model_tier(model_id: str) -> str:
    """The price tier a model bills at: quantised (int8) models are the cheaper tier. A
    fine-tuned model (``ft:<base model>:<suffix>:<id>``, an int8 variant included) bills at
    its base model's tier: a suffix that happens to contain "int8" says nothing."""
    base = model_id.split(":")[1] if model_id.startswith("ft:") else model_id
    return "int8" if "int8" in base else "standard"


@dataclass(frozen=True)
class ChargeLine:
    key: str  # stable per period: "usage:standard", "usage:int8", "finetune", "base_fee"
    description: str
    quantity: int
    amount: int  # minor units


@dataclass(frozen=True)
class RatedPeriod:
    plan_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    inputs_by_tier: dict[str, int]
    trained_tokens: int
    lines: list[ChargeLine] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)

    @property
    def usage_total(self) -> int:
        """What is invoiced as usage items (the base fee is the Stripe plan itself)."""
        return sum(line.amount for line in self.lines if line.key != "base_fee")


def _round(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def graduated(quantity: int, tiers: list[dict[str, Any]]) -> Decimal:
    """Price ``quantity`` units across graduated tiers (unit_amount per 1,000 units)."""
    total, floor = Decimal(0), 0
    for tier in tiers:
        ceiling = tier.get("up_to")
        in_tier = quantity - floor if ceiling is None else min(quantity, ceiling) - floor
        if in_tier > 0:
            total += Decimal(in_tier) * Decimal(str(tier["unit_amount"])) / PER
        if ceiling is None or quantity <= ceiling:
            break
        floor = ceiling
    return total


@dataclass(frozen=True)
class Allowance:
    """A period's included inputs, and where they come from as the invoice says it (empty:
    one plan's whole allowance)."""

    inputs: int
    source: str = ""


def pooled(
    shares: Mapping[str, Fraction] | None, plan_of: Callable[[str], Plan]
) -> Allowance | None:
    """The period's included inputs: of each plan the tenant was on in it, its share by time
    of the plan's included inputs, rounded up, together. None where no share is recorded
    (``shares`` None or empty): each plan's whole allowance then covers the usage made on
    it, as before spans were kept."""
    if not shares:
        return None
    parts = [(plan_of(plan_id), share) for plan_id, share in sorted(shares.items())]
    counts = [math.ceil(plan.included_inputs * share) for plan, share in parts]
    if len(parts) == 1:
        plan = parts[0][0]
        whole = counts[0] == plan.included_inputs
        source = "" if whole else f", its share of the period's {plan.included_inputs:,}"
    else:
        each = " and ".join(
            f"{count:,} of {plan.name} (v{plan.version})'s {plan.included_inputs:,}"
            for (plan, _), count in zip(parts, counts, strict=True)
        )
        source = f", {each} for the time on each"
    return Allowance(sum(counts), source)


def _price(plan: Plan, tier: str) -> Decimal:
    """A model tier's first overage price under ``plan`` (0: none)."""
    tiers = (plan.overage_tiers or {}).get(tier) or [{"unit_amount": 0}]
    return Decimal(str(tiers[0]["unit_amount"]))


def _dearest_first(plan: Plan) -> list[str]:
    return sorted(MODEL_TIERS, key=lambda tier: -_price(plan, tier))


@dataclass
class PlanUsage:
    """Billable usage made on one plan: inputs by model tier, trained tokens."""

    inputs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODEL_TIERS, 0))
    tokens: int = 0

    def add(self, line: str, quantity: int) -> None:
        """``quantity`` of a charge line's (``usage:<tier>`` inputs, or ``finetune`` tokens)."""
        if line.startswith("usage:"):
            self.inputs[line.removeprefix("usage:")] += quantity
        else:
            self.tokens += quantity


def _covered(
    segments: Mapping[Plan, PlanUsage], allowance: Allowance | None
) -> dict[tuple[Plan, str], int]:
    """(plan, model tier) -> its inputs the included inputs cover: the dearest first, in the
    customer's favour; ``allowance`` None: each plan's whole own, on its own usage."""
    covered: dict[tuple[Plan, str], int] = {}
    if allowance is None:
        for plan, usage in segments.items():
            left = plan.included_inputs
            for tier in _dearest_first(plan):
                covered[(plan, tier)] = count = min(usage.inputs.get(tier, 0), left)
                left -= count
        return covered
    order = sorted(
        ((plan, tier) for plan in segments for tier in MODEL_TIERS),
        key=lambda pair: (-_price(*pair), pair[0].pk, MODEL_TIERS.index(pair[1])),
    )
    left = allowance.inputs
    for plan, tier in order:
        covered[(plan, tier)] = count = min(segments[plan].inputs.get(tier, 0), left)
        left -= count
    return covered


def rate_usage(
    segments: Mapping[Plan, PlanUsage], allowance: Allowance | None
) -> dict[Plan, list[ChargeLine]]:
    """Each plan's charge lines (base fee excluded) for the usage made on it, past the
    period's included inputs (``pooled``) covering the dearest inputs first; what is past
    them is priced graduated by the tiers of the plan it was made on. Lines of no amount
    are left out."""
    covered = _covered(segments, allowance)
    rated: dict[Plan, list[ChargeLine]] = {}
    for plan, usage in segments.items():
        lines = rated[plan] = []
        tiers = plan.overage_tiers or {}
        included, source = (
            (plan.included_inputs, "") if allowance is None
            else (allowance.inputs, allowance.source)
        )  # fmt: skip
        for tier in _dearest_first(plan):
            billable = usage.inputs.get(tier, 0) - covered[(plan, tier)]
            amount = _round(graduated(billable, tiers[tier])) if tiers.get(tier) else 0
            if amount:
                lines.append(
                    ChargeLine(f"usage:{tier}", f"Classification, {tier} models, "
                               f"{billable:,} inputs past the {included:,} included{source} "
                               "(all models together)", billable, amount)
                )  # fmt: skip
        if usage.tokens and plan.finetune_unit_amount:
            amount = _round(Decimal(usage.tokens) * plan.finetune_unit_amount / PER)
            if amount:
                lines.append(
                    ChargeLine("finetune", f"Fine-tuning, {usage.tokens:,} trained tokens",
                               usage.tokens, amount)
                )  # fmt: skip
    return rated


def rate(
    *,
    plan: Plan,
    inputs_by_tier: dict[str, int],
    trained_tokens: int,
    period_start: datetime,
    period_end: datetime,
    include_base_fee: bool = True,
    share: Fraction | None = None,
) -> RatedPeriod:
    """A period's usage all made on ``plan``, priced. ``share``: of the period, the part
    the tenant spent on it (a plan change within it): that part of its included inputs,
    rounded up (None: all of them)."""
    lines: list[ChargeLine] = []
    if include_base_fee and plan.base_fee:
        lines.append(ChargeLine("base_fee", f"{plan.name} plan", 1, plan.base_fee))
    usage = PlanUsage({t: inputs_by_tier.get(t, 0) for t in MODEL_TIERS}, trained_tokens)
    allowance = None if share is None else pooled({plan.pk: share}, lambda _: plan)
    lines += rate_usage({plan: usage}, allowance)[plan]
    return RatedPeriod(
        plan_id=plan.id,
        currency=plan.currency,
        period_start=period_start,
        period_end=period_end,
        inputs_by_tier=usage.inputs,
        trained_tokens=trained_tokens,
        lines=lines,
    )


def billable_usage(
    *, tenant: Tenant, plan: Plan, start: datetime, end: datetime, from_ledger: bool = False
) -> dict[Plan, PlanUsage]:
    """A tenant's live usage in [start, end) by the plan each row was made on: (inputs by
    model tier, trained tokens). Rows from before plans were recorded count under ``plan``
    (the tenant's plan now). Whole days from the rollups unless ``from_ledger``
    (``metering.sums``)."""
    rows = usage_sums(
        tenant=tenant, livemode=True, start=start, end=end, by=("plan_id", "kind", "model"),
        from_ledger=from_ledger,
    )  # fmt: skip
    plan_ids = {row["plan_id"] for row in rows if row["plan_id"]} - {plan.pk}
    plans = {plan.pk: plan, "": plan, **Plan.objects.in_bulk(plan_ids)}
    usage: dict[Plan, PlanUsage] = {}
    for row in rows:
        made_on = plans.get(row["plan_id"], plan)  # a plan row is never deleted
        segment = usage.setdefault(made_on, PlanUsage())
        if row["kind"] != UsageRecord.Kind.INFERENCE:
            segment.tokens += int(row["tokens"] or 0)
            continue
        count = row["inputs"] or 0
        if not made_on.cached_results_billed:
            count -= row["cached"] or 0
        segment.inputs[model_tier(row["model"])] += max(count, 0)
    return usage


def rate_tenant_period(
    *,
    tenant: Tenant,
    plan: Plan,
    start: datetime,
    end: datetime,
    include_base_fee: bool = True,
    shares: dict[str, Fraction] | None = None,
    from_ledger: bool = False,
) -> RatedPeriod:
    """The period priced: ``plan`` (the tenant's plan now) for the base fee, and each plan
    the period's usage was made on for that usage (one line per key, their sum).
    ``from_ledger``: summed from the ledger alone (reconciliation), not its rollups."""
    usage = billable_usage(tenant=tenant, plan=plan, start=start, end=end, from_ledger=from_ledger)
    segments = dict(sorted(usage.items(), key=lambda item: item[0] != plan))  # the current first
    if shares is None:  # (a caller rating one period twice reads them once)
        shares = plan_shares(tenant=tenant, start=start)
    plans = {made_on.pk: made_on for made_on in segments} | {plan.pk: plan}
    plans |= Plan.objects.in_bulk(set(shares) - set(plans))  # (time, no usage, in the period)
    lines: dict[str, ChargeLine] = {}
    if include_base_fee and plan.base_fee:
        lines["base_fee"] = ChargeLine("base_fee", f"{plan.name} plan", 1, plan.base_fee)
    for made_on, part in rate_usage(segments, pooled(shares, plans.__getitem__)).items():
        for line in part:
            text = line.description
            if len(segments) > 1:  # say which plan each part of a line was priced on
                text = f"{made_on.name} (v{made_on.version}): {text}"
            quantity, amount = line.quantity, line.amount
            was = lines.get(line.key)
            if was is not None:  # the same line on an earlier plan: one line, their sum
                text = f"{was.description}; {text}"
                quantity, amount = was.quantity + quantity, was.amount + amount
            lines[line.key] = ChargeLine(line.key, text, quantity, amount)
    return RatedPeriod(
        plan_id=plan.id,
        currency=plan.currency,
        period_start=start,
        period_end=end,
        inputs_by_tier={t: sum(s.inputs[t] for s in usage.values()) for t in MODEL_TIERS},
        trained_tokens=sum(s.tokens for s in usage.values()),
        lines=list(lines.values()),
    )

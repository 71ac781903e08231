"""The rating engine: the usage ledger of a period, priced by a plan.

Pure arithmetic on integers and Decimals (never floats): included inputs first (applied to
the dearest tier first, in the customer's favour), then graduated overage per model tier,
then fine-tuning per 1,000 trained tokens. Amounts are rounded half-up to whole minor units
once per line, so the lines always add up to the total that is invoiced."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import Q, Sum

from metering.models import UsageRecord
from plans.models import MODEL_TIERS, Plan
from tenants.models import Tenant

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


def rate(
    *,
    plan: Plan,
    inputs_by_tier: dict[str, int],
    trained_tokens: int,
    period_start: datetime,
    period_end: datetime,
    include_base_fee: bool = True,
) -> RatedPeriod:
    lines: list[ChargeLine] = []
    if include_base_fee and plan.base_fee:
        lines.append(ChargeLine("base_fee", f"{plan.name} plan", 1, plan.base_fee))
    tiers = plan.overage_tiers or {}
    # Included inputs cover the dearest tier first.
    allowance = plan.included_inputs
    order = sorted(
        MODEL_TIERS,
        key=lambda t: -Decimal(str((tiers.get(t) or [{"unit_amount": 0}])[0]["unit_amount"])),
    )
    for tier in order:
        used = inputs_by_tier.get(tier, 0)
        covered = min(used, allowance)
        allowance -= covered
        billable = used - covered
        if billable and tiers.get(tier):
            amount = _round(graduated(billable, tiers[tier]))
            lines.append(
                ChargeLine(f"usage:{tier}", f"Classification, {tier} models, "
                           f"{billable:,} inputs over the included {plan.included_inputs:,}",
                           billable, amount)
            )  # fmt: skip
    if trained_tokens and plan.finetune_unit_amount:
        amount = _round(Decimal(trained_tokens) * plan.finetune_unit_amount / PER)
        lines.append(
            ChargeLine("finetune", f"Fine-tuning, {trained_tokens:,} trained tokens",
                       trained_tokens, amount)
        )  # fmt: skip
    return RatedPeriod(
        plan_id=plan.id,
        currency=plan.currency,
        period_start=period_start,
        period_end=period_end,
        inputs_by_tier={t: inputs_by_tier.get(t, 0) for t in MODEL_TIERS},
        trained_tokens=trained_tokens,
        lines=[line for line in lines if line.amount or line.key == "base_fee"],
    )


def billable_usage(
    *, tenant: Tenant, plan: Plan, start: datetime, end: datetime
) -> tuple[dict[str, int], int]:
    """(inputs by model tier, trained tokens) of a tenant's live usage in [start, end)."""
    records = UsageRecord.objects.for_tenant(tenant).filter(
        livemode=True, occurred_at__gte=start, occurred_at__lt=end
    )
    inputs: dict[str, int] = dict.fromkeys(MODEL_TIERS, 0)
    rows = (
        records.filter(kind=UsageRecord.Kind.INFERENCE)
        .values("model")
        .annotate(inputs=Sum("inputs"), cached=Sum("cached"))
    )
    for row in rows:
        count = row["inputs"] or 0
        if not plan.cached_results_billed:
            count -= row["cached"] or 0
        inputs[model_tier(row["model"])] += max(count, 0)
    tokens = records.filter(~Q(kind=UsageRecord.Kind.INFERENCE)).aggregate(t=Sum("tokens"))["t"]
    return inputs, int(tokens or 0)


def rate_tenant_period(
    *, tenant: Tenant, plan: Plan, start: datetime, end: datetime, include_base_fee: bool = True
) -> RatedPeriod:
    inputs, tokens = billable_usage(tenant=tenant, plan=plan, start=start, end=end)
    return rate(
        plan=plan, inputs_by_tier=inputs, trained_tokens=tokens,
        period_start=start, period_end=end, include_base_fee=include_base_fee,
    )  # fmt: skip

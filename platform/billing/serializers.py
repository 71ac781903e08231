"""Billing's public shapes, Stripe-like. Money is integer minor units; a unit price that
can be fractional (per 1,000 inputs) is a decimal string, as Stripe's ``*_decimal`` fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from core.serializers import StrictSerializer, StrictStringField
from plans.models import MODEL_TIERS, Plan

from .models import Invoice, Subscription


class SubscriptionChangeSerializer(StrictSerializer):
    plan = StrictStringField(max_length=40, help_text="A plan id from GET /v1/plans.")


class TierSerializer(serializers.Serializer[Any]):
    up_to = serializers.IntegerField(allow_null=True, help_text="Inclusive; null = no end.")
    unit_amount_decimal = serializers.CharField(help_text="Minor units per 1,000 inputs.")


class OverageSerializer(serializers.Serializer[Any]):
    tiers_mode = serializers.CharField(help_text="Always 'graduated'.")
    per = serializers.IntegerField(help_text="Units each unit amount is for (1,000 inputs).")
    tiers = TierSerializer(many=True)


class LimitsSerializer(serializers.Serializer[Any]):
    requests_per_minute = serializers.IntegerField()
    key_requests_per_minute = serializers.IntegerField(allow_null=True)
    concurrency = serializers.IntegerField()
    monthly_inputs_cap = serializers.IntegerField(allow_null=True, help_text="null = no cap.")


class FeaturesSerializer(serializers.Serializer[Any]):
    fine_tuning = serializers.BooleanField()
    max_fine_tuned_models = serializers.IntegerField()
    lora = serializers.BooleanField()


class PlanSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(help_text="What POST /v1/subscription takes.")
    object = serializers.CharField()
    version = serializers.IntegerField()
    name = serializers.CharField()
    currency = serializers.CharField()
    amount = serializers.IntegerField(help_text="Monthly base fee, minor units.")
    interval = serializers.CharField()
    included_inputs = serializers.IntegerField()
    cached_inputs_billed = serializers.BooleanField(
        help_text="Whether inputs answered from the result cache (usage `cached`) count as"
        " billed inputs (the included ones, then overage); false: they are free."
    )
    overage = serializers.DictField(child=OverageSerializer(), help_text="By model tier.")
    finetune_unit_amount_decimal = serializers.CharField(
        help_text="Minor units per 1,000 trained tokens."
    )
    limits = LimitsSerializer()
    features = FeaturesSerializer()


class PlanListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = PlanSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()


class SubscriptionSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    plan = PlanSerializer()
    status = serializers.ChoiceField(choices=Subscription.Status.values)
    current_period_start = serializers.DateTimeField()
    current_period_end = serializers.DateTimeField()
    past_due_since = serializers.DateTimeField(allow_null=True)
    payment_blocked = serializers.BooleanField(
        help_text="Past due beyond the grace period: billable calls answer 402."
    )


class InvoiceSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    number = serializers.CharField()
    status = serializers.CharField()
    currency = serializers.CharField()
    amount_due = serializers.IntegerField()
    amount_paid = serializers.IntegerField()
    total = serializers.IntegerField()
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    hosted_invoice_url = serializers.CharField()
    created = serializers.DateTimeField()


class InvoiceListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = InvoiceSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()


class UpcomingLineSerializer(serializers.Serializer[Any]):
    key = serializers.CharField(help_text="base_fee, proration, usage:<tier>, finetune.")
    description = serializers.CharField(allow_blank=True)
    quantity = serializers.IntegerField()
    amount = serializers.IntegerField()
    proration = serializers.BooleanField()
    period_start = serializers.DateTimeField(
        allow_null=True,
        help_text="What the line is for: its period for usage (the current one, or a closed"
        " one whose usage was pushed late); for Stripe's base fee and prorations, Stripe's own"
        " period (a base fee is billed ahead, for the next period). Null: unknown.",
    )
    period_end = serializers.DateTimeField(allow_null=True)


class UpcomingInvoiceSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    plan = serializers.CharField()
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    lines = UpcomingLineSerializer(many=True)
    subtotal = serializers.IntegerField()
    total = serializers.IntegerField()
    amount_due = serializers.IntegerField()


def _decimal(amount: object) -> str:
    """A unit price as Stripe writes ``*_decimal`` fields: "10", "0.5" (never "1E+1")."""
    return format(Decimal(str(amount)).normalize(), "f")


def plan_render(plan: Plan) -> dict[str, Any]:
    tiers = plan.overage_tiers or {}
    overage = {
        tier: {
            "tiers_mode": "graduated",
            "per": 1000,
            "tiers": [
                {"up_to": t.get("up_to"), "unit_amount_decimal": _decimal(t["unit_amount"])}
                for t in tiers[tier]
            ],
        }
        for tier in MODEL_TIERS
        if tiers.get(tier)
    }
    return {
        "id": plan.slug,
        "object": "plan",
        "version": plan.version,
        "name": plan.name,
        "currency": plan.currency,
        "amount": plan.base_fee,
        "interval": "month",
        "included_inputs": plan.included_inputs,
        "cached_inputs_billed": plan.cached_results_billed,
        "overage": overage,
        "finetune_unit_amount_decimal": _decimal(plan.finetune_unit_amount),
        "limits": {
            "requests_per_minute": plan.rate_limit_per_minute,
            "key_requests_per_minute": plan.key_rate_limit_per_minute,
            "concurrency": plan.concurrency_cap,
            "monthly_inputs_cap": plan.monthly_hard_cap,
        },
        "features": {
            "fine_tuning": plan.fine_tuning,
            "max_fine_tuned_models": plan.max_fine_tuned_models,
            "lora": plan.lora,
        },
    }


def invoice_render(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "object": "invoice",
        "number": invoice.number,
        "status": invoice.status,
        "currency": invoice.currency,
        "amount_due": invoice.amount_due,
        "amount_paid": invoice.amount_paid,
        "total": invoice.total,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "created": invoice.created_at,
    }

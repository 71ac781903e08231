"""Operators edit the catalogue here. A version anything refers to (a subscriber, a billing
period, usage priced on it, a Stripe plan) never has its terms changed in place: saving new
terms creates the next version (which new subscribers get), and existing subscribers keep
theirs until they are moved. Its name and listing flags may change in place."""

from __future__ import annotations

from typing import Any

import stripe
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Max, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from billing.models import BillingPeriod, Subscription
from billing.stripe_client import BillingUnavailable
from billing.stripe_sync import plans_sync_to_stripe
from economics.models import UsageRollup

from .models import Plan

PRICING_FIELDS = ["stripe_product_id", "stripe_plan_id", "id", "version", "created_at"]


# What an operator may change on a version in use: nothing that prices or limits usage.
IN_PLACE_FIELDS = frozenset({"name", "public", "is_current"})


def _in_use(plan: Plan) -> bool:
    """Whether changing the version's terms in place would change what was agreed or done:
    a tenant is on it, a billing period or usage was priced on it (rating reads a usage
    row's plan as it is now), or Stripe has its base fee (a Stripe plan's amount is fixed,
    so the next subscriber would pay the old one)."""
    # NOTE: unscoped on purpose: whether any tenant at all refers to this version. Usage is
    # looked up in the daily rollups, which carry every ledger row's plan, not the ledger.
    return bool(plan.stripe_plan_id) or any(
        manager.unscoped().filter(plan_id=plan.pk).exists()
        for manager in (Subscription.objects, BillingPeriod.objects, UsageRollup.objects)
    )


def _terms_changed(original: Plan, edited: Plan) -> bool:
    return any(
        getattr(original, field.attname) != getattr(edited, field.attname)
        for field in Plan._meta.concrete_fields
        if field.name not in IN_PLACE_FIELDS and field.editable and not field.primary_key
    )


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin[Plan]):
    list_display = ["id", "name", "is_current", "public", "base_fee", "currency",
                    "included_inputs", "stripe_plan_id"]  # fmt: skip
    list_filter = ["slug", "is_current", "public"]
    readonly_fields = PRICING_FIELDS
    actions = ["sync_to_stripe"]

    def save_model(self, request: HttpRequest, obj: Plan, form: ModelForm, change: bool) -> None:
        if not change:
            latest = Plan.objects.filter(slug=obj.slug).aggregate(v=Max("version"))["v"] or 0
            obj.version = latest + 1
            obj.id = f"{obj.slug}@{obj.version}"
            with transaction.atomic():
                if obj.is_current:
                    Plan.objects.filter(slug=obj.slug, is_current=True).update(is_current=False)
                super().save_model(request, obj, form, change)
            return
        original = Plan.objects.get(pk=obj.pk)
        if not _terms_changed(original, obj) or not _in_use(original):
            super().save_model(request, obj, form, change)
            return
        with transaction.atomic():
            latest = Plan.objects.filter(slug=original.slug).aggregate(v=Max("version"))["v"]
            Plan.objects.filter(slug=original.slug, is_current=True).update(is_current=False)
            obj.pk = None
            obj.version = int(latest or 0) + 1
            obj.id = f"{original.slug}@{obj.version}"
            obj.slug = original.slug
            obj.is_current = True
            obj.stripe_plan_id = ""  # a new version is a new Stripe plan (its amount is fixed)
            obj.save(force_insert=True)
        messages.info(
            request,
            f"{original.id} is in use (subscribers, priced usage or a Stripe plan): its new"
            f" terms are saved as {obj.id}.",
        )

    @admin.action(description="Sync the selected plans to Stripe (product + monthly plan)")
    def sync_to_stripe(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        try:
            synced = plans_sync_to_stripe(plans=list(queryset))
        except (BillingUnavailable, stripe.StripeError) as exc:
            self.message_user(request, f"Stripe sync failed: {exc}", messages.ERROR)
            return
        paid = [plan.id for plan in synced if plan.stripe_plan_id]
        self.message_user(request, f"Synced to Stripe: {', '.join(paid) or 'none (free plans)'}.")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"is_current": True}

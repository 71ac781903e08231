"""Operators edit the catalogue here. A version that has subscribers is never changed in
place: saving it creates the next version (which new subscribers get), and existing
subscribers keep theirs until they are moved."""

from __future__ import annotations

from typing import Any

import stripe
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Max, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from billing.models import Subscription
from billing.stripe_client import BillingUnavailable
from billing.stripe_sync import plans_sync_to_stripe

from .models import Plan

PRICING_FIELDS = ["stripe_product_id", "stripe_plan_id", "id", "version", "created_at"]


def _in_use(plan: Plan) -> bool:
    # NOTE: unscoped on purpose: whether any tenant at all is on this version.
    return Subscription.objects.unscoped().filter(plan_id=plan.pk).exists()


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
        if not _in_use(original):
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
        messages.info(request, f"{original.id} has subscribers: saved as {obj.id} instead.")

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

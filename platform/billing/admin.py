"""Read-mostly views for operators: Stripe is the system of record for money, so nothing
here edits what mirrors it. Reconciliation rows with a difference are what to look at."""

from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ReadOnlyAdmin

from .models import (
    BillingPeriod,
    Invoice,
    Reconciliation,
    StripeEvent,
    Subscription,
    UsageChargePush,
)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "plan", "status", "past_due_since", "current_period_end",
                    "stripe_subscription_id"]  # fmt: skip
    list_filter = ["status", "plan"]
    search_fields = ["tenant__slug", "stripe_customer_id", "stripe_subscription_id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        return Subscription.objects.unscoped().select_related("tenant", "plan")


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "start", "end"]
    search_fields = ["tenant__slug"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BillingPeriod]:
        return BillingPeriod.objects.unscoped().select_related("tenant")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "received_at", "processed_at", "error"]
    list_filter = ["type"]
    search_fields = ["id"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["id", "tenant", "status", "total", "currency", "period_start", "created_at"]
    list_filter = ["status"]
    search_fields = ["id", "tenant__slug"]
    # Stripe's hosted invoice pages are https (and Django 6 assumes it: no warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Invoice]:
        return Invoice.objects.unscoped().select_related("tenant")


@admin.register(UsageChargePush)
class UsageChargePushAdmin(ReadOnlyAdmin):
    list_display = ["idempotency_key", "tenant", "amount", "currency", "pushed_at"]
    search_fields = ["idempotency_key", "tenant__slug", "stripe_invoice_item_id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageChargePush]:
        return UsageChargePush.objects.unscoped().select_related("tenant")


@admin.register(Reconciliation)
class ReconciliationAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "period_start", "period_end", "ledger_amount", "stripe_amount",
                    "difference", "checked_at"]  # fmt: skip
    list_filter = ["checked_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Reconciliation]:
        return Reconciliation.objects.unscoped().select_related("tenant")

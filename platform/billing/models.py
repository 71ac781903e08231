from __future__ import annotations

from django.db import models

from core.scoping import TenantScopedManager


class Subscription(models.Model):
    """A tenant's plan, mirrored from Stripe where Stripe is involved (paid plans). Every
    tenant has one; it starts on `free`."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        TRIALING = "trialing"
        PAST_DUE = "past_due"
        CANCELED = "canceled"

    tenant = models.OneToOneField(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="subscription", primary_key=True
    )
    plan = models.ForeignKey("plans.Plan", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    stripe_customer_id = models.CharField(max_length=100, blank=True, default="")
    stripe_subscription_id = models.CharField(max_length=100, blank=True, default="")
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    past_due_since = models.DateTimeField(null=True, blank=True)
    # When the state we hold was read from (or made in) Stripe: an older read never
    # overwrites a newer one (webhooks arrive out of order; handlers run side by side).
    # Unix microseconds (``billing.stripe_client.stripe_moment``), a 64-bit column.
    stripe_updated_at = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return f"{self.tenant_id}: {self.plan_id} ({self.status})"


class BillingPeriod(models.Model):
    """A period a tenant's usage is priced in, as its subscription had it: a plan's included
    inputs cover one period's usage. Paid plans have Stripe's periods (anchored on the day
    the subscription began), free has calendar months (from the day it began). Written each
    time a subscription's period is set (``billing.periods.billing_period_record``); a period
    that a later one begins inside ends where that one begins."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    start = models.DateTimeField()
    end = models.DateTimeField()
    # Where the period was to end, when a move to free or a cancellation cut it short: the
    # length its plans' shares of the included inputs are counted against (the fee of the
    # rest was not credited, and its time counts as the last plan's).
    scheduled_end = models.DateTimeField(null=True, blank=True)
    # The plan the period ends on (a change within a period keeps the period): whose base
    # fee it pays.
    plan = models.ForeignKey("plans.Plan", on_delete=models.PROTECT, related_name="+")

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "start"], name="billing_period_start_unique")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}: {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M}"


class PlanSpan(models.Model):
    """From ``start`` on, the tenant was on ``plan`` (until its next span): what a period's
    included inputs are shared by when the tenant changed plans within it, each plan's by the
    time it was on it, as Stripe prorates its fee (``billing.periods.plan_shares``). Written
    at each plan change (the plan left, from its period's start, the first time)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    plan = models.ForeignKey("plans.Plan", on_delete=models.PROTECT, related_name="+")
    start = models.DateTimeField()

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "start"], name="plan_span_start_unique")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}: {self.plan_id} from {self.start:%Y-%m-%d %H:%M}"


class StripeEvent(models.Model):
    """Each webhook event once (unique id); processed asynchronously and idempotently."""

    id = models.CharField(primary_key=True, max_length=100)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.id} {self.type}"


class Invoice(models.Model):
    """A finalised Stripe invoice, mirrored for GET /v1/invoices."""

    id = models.CharField(primary_key=True, max_length=100)  # Stripe's in_…
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    number = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=20)
    currency = models.CharField(max_length=3)
    amount_due = models.BigIntegerField(default=0)
    amount_paid = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)
    period_start = models.DateTimeField(null=True)
    period_end = models.DateTimeField(null=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField()
    stripe_updated_at = models.BigIntegerField(default=0)  # unix microseconds, as above

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return self.id


class UsageChargePush(models.Model):
    """One usage charge line pushed to Stripe as an invoice item. The idempotency key
    (tenant + period + line) is unique here and is sent to Stripe, so a retry never bills
    twice."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    line = models.CharField(max_length=100)
    description = models.CharField(max_length=300)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    stripe_invoice_item_id = models.CharField(max_length=100, blank=True, default="")
    pushed_at = models.DateTimeField(null=True, blank=True)
    # Pushed to a customer whose subscription had ended, and not on an invoice yet: the
    # invoice of its own it needs is asked for at every push until Stripe has made it.
    awaiting_invoice = models.BooleanField(default=False)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return self.idempotency_key


class Reconciliation(models.Model):
    """What the ledger says a tenant owes for a period against what Stripe holds. A
    difference is reported, never silently fixed."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    ledger_amount = models.BigIntegerField()
    stripe_amount = models.BigIntegerField()
    difference = models.BigIntegerField()
    checked_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.period_start:%Y-%m}: {self.difference}"

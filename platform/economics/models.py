from __future__ import annotations

from django.db import models

from core.scoping import TenantScopedManager


class UsageRollup(models.Model):
    """The ledger summed per day, tenant, model, kind, mode and plan: what margin reports
    and the pricing simulator read, so no page view ever scans the raw ledger. Kept up to
    date by the usage consumer in the same transaction as the ledger rows; rebuilt from the
    ledger by ``manage.py rebuild_rollups`` (idempotent)."""

    day = models.DateField()
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    livemode = models.BooleanField()
    plan_id = models.CharField(max_length=64)
    requests = models.PositiveBigIntegerField(default=0)
    inputs = models.PositiveBigIntegerField(default=0)
    cached = models.PositiveBigIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    compute_ms = models.FloatField(default=0)
    cost_micros = models.DecimalField(max_digits=24, decimal_places=4, default=0)
    # The latest call it sums: which of a day's plans a month ended on ("the plan of the
    # month's last call") must not depend on the order its rows were created in (a rebuild
    # creates them in another). Null on rows from before it was kept.
    last_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "model", "kind", "livemode", "plan_id"],
                name="rollup_grain",
            )
        ]
        indexes = [
            models.Index(fields=["day"], name="rollup_day"),
            models.Index(fields=["plan_id"], name="rollup_plan"),  # as usage_plan in metering
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id} {self.model}"

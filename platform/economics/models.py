from __future__ import annotations

from django.db import models

from core.scoping import TenantScopedManager

UNKEYED = ""  # a rollup's api_key_id where its key is unknown (``RollupsUnkeyed``)


class UsageRollup(models.Model):
    """The ledger summed per day, tenant, model, kind, mode, plan and API key: what margin
    reports, the pricing simulator and ``/v1/usage`` (``metering.sums``) read, so no page
    view scans the raw ledger. Kept up to date by the usage consumer in the same transaction
    as the ledger rows; rebuilt from the ledger by ``manage.py rebuild_rollups``
    (idempotent)."""

    day = models.DateField()
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    livemode = models.BooleanField()
    plan_id = models.CharField(max_length=64)
    # The ledger row's (``UsageRecord.api_key_id``). Empty on rows summed before the key was
    # part of the grain: those hold every key's usage of their grain, unknown which, until
    # ``rebuild_rollups`` keys them (``metering.sums`` reads a range holding one by key from
    # the ledger). In the database's default too: the release before, still running while
    # a rolling deploy replaces it, inserts rows without the column.
    api_key_id = models.CharField(max_length=32, blank=True, default="", db_default="")
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
                fields=["day", "tenant", "model", "kind", "livemode", "plan_id", "api_key_id"],
                name="rollup_grain",
            )
        ]
        indexes = [
            models.Index(fields=["day"], name="rollup_day"),
            models.Index(fields=["plan_id"], name="rollup_plan"),  # as usage_plan in metering
            # Whether a tenant's range holds rows without a key (``metering.sums``): a probe
            # of this index, empty once ``rebuild_rollups`` has keyed every row.
            models.Index(
                fields=["tenant", "livemode", "day"],
                condition=models.Q(api_key_id=""),
                name="rollup_unkeyed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.tenant_id} {self.model}"


class RollupsUnkeyed(models.Model):
    """Present (one row): the rollups are written with the API key unknown (``""``), as
    they were before the key joined their grain. Economics 0004 makes it on a database
    that already holds rollups: the release before, still running through the rollout,
    adds a call to every row of its six-column grain, so a grain must keep one row until
    no process of it is left; ``manage.py rebuild_rollups`` (run after that) keys every row
    and removes it. Absent, as on a new install, rows are keyed. Reports by key read the
    days that hold unkeyed rows from the ledger (``metering.sums``)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    since = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"rollups unkeyed since {self.since}"

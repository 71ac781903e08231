from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

from core.scoping import TenantScopedQuerySet


class AppendOnlyError(RuntimeError):
    pass


class _AppendOnly:
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("usage records are append-only; write a correcting row instead")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("usage records are append-only; write a correcting row instead")


class LedgerQuerySet(_AppendOnly, TenantScopedQuerySet):
    """The ledger is append-only: corrections are new rows, never edits."""


class EventIdQuerySet(_AppendOnly, models.QuerySet[Any]):
    pass


class UsageRecord(models.Model):
    """One metered event (an answered classification, later a fine-tune). ``event_id`` is the
    request id: its uniqueness is the last guard against counting a call twice.

    A correcting row (``corrects``: the event id it voids; ``metering.corrections``) negates
    an event's billable quantities, in its tenant, mode, model, kind, key, plan and moment,
    so that every sum of the ledger nets it out; its compute and cost are 0 (the compute was
    spent: the cost stays with the event). Its own event id is ``void_<event id>``, which the
    uniqueness below makes once per event. Only correcting rows hold negative quantities,
    and they hold no positive one (the two check constraints).

    On PostgreSQL the table is partitioned by month of ``occurred_at`` (``partitions``), and a
    partitioned table cannot hold a unique index without its partition key: the uniqueness of
    ``event_id`` is kept by ``LedgerEventId`` instead, which a trigger writes before each row:
    a row whose id is there already is an IntegrityError, as the unique index made it, or,
    for the usage consumer's insert (``metering.services``), skipped. On SQLite the table is
    one table with its unique constraint, as the model says."""

    class Kind(models.TextChoices):
        INFERENCE = "inference", "Inference"
        FINE_TUNE = "fine_tune", "Fine-tune"  # event_id is the job id: billed once
        # The compute of a fine-tune that did not succeed (failed, cancelled): a cost to
        # serve, never billed nor reported to the tenant (``metering.sums`` leaves it out).
        # event_id is the job id (its end), or "<job id>:<attempt>" (an attempt lost)
        COMPUTE = "compute", "Unbilled compute"

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Indexed by ``usage_tenant_time``, which leads with it: a second index of its own only
    # cost every insert a write (and on PostgreSQL a third, the text-pattern twin).
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    api_key_id = models.CharField(max_length=32)  # (indexed: Meta.indexes, ``usage_api_key``)
    livemode = models.BooleanField(default=True)
    model = models.CharField(max_length=200)
    # Signed: negative on a correcting row only (Meta.constraints).
    inputs = models.IntegerField()
    tokens = models.BigIntegerField()
    compute_ms = models.FloatField()
    cached = models.IntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, default="")
    # Cost to serve, in micro-units of the worker pool's currency (compute time x the pool's
    # hardware price per hour); margin = price - cost is a query, not a guess.
    cost_micros = models.DecimalField(max_digits=20, decimal_places=4, default=0)
    pool = models.CharField(max_length=64, blank=True, default="")
    # The plan version the tenant was on when the event reached the ledger (a fraction of a
    # second after the call): margins by plan are those of the plan a call was made on, and
    # a rebuild of the rollups reproduces them after the tenant changed plans. Empty on rows
    # written before it was recorded.
    plan_id = models.CharField(max_length=64, blank=True, default="")
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    # A correcting row's: the event id it voids, why, and who voided it (an operator's user
    # name, where known). Blank on every other row. Defaults in the database too: the code
    # of the release before, still running while a rolling deploy replaces it, inserts rows
    # without these columns (``core.rows.insert_new`` lists its model's).
    corrects = models.CharField(max_length=64, blank=True, default="", db_default="")
    reason = models.TextField(blank=True, default="", db_default="")
    corrected_by = models.CharField(max_length=150, blank=True, default="", db_default="")

    objects = LedgerQuerySet.as_manager()

    class Meta:
        permissions = [("void_usagerecord", "Can void a usage record (append a correcting row)")]
        constraints = [
            # The usage consumer and every other writer of ordinary rows: never negative.
            models.CheckConstraint(
                condition=models.Q(inputs__gte=0, tokens__gte=0, cached__gte=0)
                | ~models.Q(corrects=""),
                name="usage_counts_not_negative",
            ),
            # A correcting row takes away, never adds.
            models.CheckConstraint(
                condition=models.Q(corrects="")
                | models.Q(inputs__lte=0, tokens__lte=0, cached__lte=0),
                name="usage_corrections_not_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "livemode", "occurred_at"], name="usage_tenant_time"),
            # Whether any usage was made on a plan version (plans.admin: its terms and its id
            # are then kept for good).
            models.Index(fields=["plan_id"], name="usage_plan"),
            # The admin's exact search by key. An Index, not db_index=True: on PostgreSQL that
            # adds a varchar_pattern_ops twin for LIKE 'prefix%', which nothing runs (the
            # search is exact); the event id's twin is dropped by migration 0010 as well.
            models.Index(fields=["api_key_id"], name="usage_api_key"),
            # The few rows the admin's list page filters for (correcting rows, fine-tunes),
            # newest first: read from these rather than from every row of every month.
            models.Index(fields=["id"], condition=~models.Q(corrects=""), name="usage_corrections"),
            models.Index(
                fields=["id"], condition=~models.Q(kind="inference"), name="usage_not_inference"
            ),
        ]

    def __str__(self) -> str:
        return self.event_id


class LedgerEventId(models.Model):
    """Every event id in the ledger, once (PostgreSQL: see ``UsageRecord``; unused on SQLite).
    Append-only as the ledger is."""

    event_id = models.CharField(max_length=64, primary_key=True)

    objects = EventIdQuerySet.as_manager()

    def __str__(self) -> str:
        return self.event_id

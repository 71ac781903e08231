from __future__ import annotations

from django.db import models

from .scoping import TenantScopedManager


class IdempotencyRecord(models.Model):
    """One ``Idempotency-Key`` a tenant sent on a POST, and what became of it.

    A completed record replays its response to the same body and conflicts with any other.
    A released one (the first attempt failed: timeout, overload, bad input) may be retried;
    a retry of the same body reuses the first attempt's request id, so work the first attempt
    did after all (a worker that finished late) is metered once, under that one id."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        RELEASED = "released"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    # Live and test mode keep apart, as Stripe keeps them: a test key's request under a key
    # never replays to a live key (which would then run nothing), nor the other way round.
    # NOTE: db_default as well: an API process still running the code before this column
    # (a rolling deploy) inserts records without it.
    livemode = models.BooleanField(default=True, db_default=True)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    request_id = models.CharField(max_length=40)
    state = models.CharField(max_length=16, choices=State.choices)
    locked_until = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True)
    # The JSON as it was answered, as text: a replay is the same body, members in the same
    # order (PostgreSQL's jsonb sorts them: a classification's scores came back reordered).
    response_body = models.TextField(null=True)  # noqa: DJ001  (none kept: NULL, as before)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "livemode", "key"], name="idempotency_tenant_mode_key"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return f"{self.key} ({self.state})"

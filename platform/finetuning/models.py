from __future__ import annotations

from django.db import models

from core.ids import new_id
from core.scoping import TenantScopedManager


def _job_id() -> str:
    return new_id("ftjob")


def _event_id() -> str:
    return new_id("ftevent")


class FineTuneJob(models.Model):
    """A fine-tuning job. The worker never writes this row: it sends events, and the
    platform's job-events consumer applies them (finetuning/events.py)."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files", "Validating files"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Method(models.TextChoices):
        HEAD = "head", "Head on the frozen encoder"
        LORA = "lora", "LoRA adapters"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=32, default=_job_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    api_key_id = models.CharField(max_length=32)
    livemode = models.BooleanField(default=True)
    base_model = models.CharField(max_length=64)
    method = models.CharField(max_length=8, choices=Method.choices)
    training_dataset = models.ForeignKey(
        "datasets.Dataset", on_delete=models.PROTECT, related_name="+"
    )
    validation_dataset = models.ForeignKey(
        "datasets.Dataset", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The files' hashes when the job was created: what the worker trains on, whatever
    # happens to the dataset rows afterwards.
    training_file = models.CharField(max_length=64)
    validation_file = models.CharField(max_length=64, blank=True, default="")
    hyperparameters = models.JSONField(default=dict)
    suffix = models.CharField(max_length=40, blank=True, default="")
    seed = models.PositiveIntegerField(default=0)
    # The plan the job was admitted on (a Plan's id): what it is billed on, though the tenant
    # move to another plan while it runs ("" for jobs from before: the plan at recording).
    plan_id = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=24, choices=Status.choices)
    attempt = models.PositiveSmallIntegerField(default=1)
    fine_tuned_model = models.CharField(max_length=200, blank=True, default="")
    trained_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    metrics = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message"}
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # What the running attempt had used at its last heartbeat, as its worker costed it (a
    # usage event of kind ``compute``): recorded as unbilled compute when the lease gives
    # the attempt up, whose worker will never report its end.
    attempt_usage = models.JSONField(null=True, blank=True)
    # When it was handed to the training queue (dispatch.py): a queued job without it waits
    # for one of its tenant's FINETUNE_DISPATCHED_PER_TENANT slots.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="ftjob_tenant_created"),
            models.Index(fields=["status", "heartbeat_at"], name="ftjob_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class FineTuneEvent(models.Model):
    """What a user watching the job sees. Worker events carry (attempt, seq), unique per
    job, which makes a redelivered event a no-op; the platform's own have seq NULL."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    id = models.CharField(primary_key=True, max_length=40, default=_event_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="events")
    attempt = models.PositiveSmallIntegerField(default=0)
    seq = models.PositiveIntegerField(null=True, blank=True)
    type = models.CharField(max_length=16, default="log")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "attempt", "seq"], name="ftevent_unique_worker_event"
            )
        ]
        indexes = [models.Index(fields=["job", "created_at"], name="ftevent_job_created")]

    def __str__(self) -> str:
        return self.id

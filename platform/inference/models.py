from __future__ import annotations

from django.db import models

from core.scoping import TenantScopedQuerySet


class ModelQuerySet(TenantScopedQuerySet):
    def visible_to(self, tenant_id: str, livemode: bool, deleted: bool = False) -> ModelQuerySet:
        """Base models (shared by everyone) and the tenant's own fine-tuned models of the
        mode asking (test-mode jobs make test-mode models); deleted ones too with ``deleted``
        (a list's cursors)."""
        visible = self.unscoped().filter(
            models.Q(tenant__isnull=True) | models.Q(tenant_id=tenant_id, livemode=livemode)
        )
        return visible if deleted else visible.filter(deleted_at__isnull=True)


class AIModel(models.Model):
    """The model registry: base encoders everyone may call, and tenants' fine-tuned models
    (``tenant`` set) that only their owner sees."""

    class Kind(models.TextChoices):
        BASE = "base", "Base"
        FINE_TUNED = "fine_tuned", "Fine-tuned"

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        DISABLED = "disabled", "Disabled"

    id = models.CharField(primary_key=True, max_length=200)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="models"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_model = models.CharField(
        max_length=64, help_text="The encoder that serves this model, e.g. minilm-l6."
    )
    description = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    labels = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(null=True, blank=True)
    # Fine-tuned models: content hash of the model file in the artifact store, sent to the
    # worker with each request so that it can fetch and cache the model.
    artifact = models.CharField(max_length=64, blank=True, default="")
    # A fine-tuned model's int8 variant (same artifact, served on the int8 base model) names
    # the model it was derived from; deleting that model deletes the variant too.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="variants"
    )
    accuracy_delta = models.FloatField(
        null=True,
        blank=True,
        help_text="int8 variants: validation accuracy minus the parent's, in points.",
    )
    # Fine-tuned models: made by a test-mode job (an sk_test_ key), such a model is seen and
    # served in test mode only, as Stripe keeps test objects apart: its training was not
    # billed, so live traffic must not run on it.
    livemode = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Set once a deleted model's file has left the artifact store, or is left to a model
    # that serves the same file (``inference.services.model_files_sweep``).
    files_released_at = models.DateTimeField(null=True, blank=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        verbose_name = "model"
        indexes = [models.Index(fields=["tenant", "-created_at"], name="model_tenant_created")]

    def __str__(self) -> str:
        return self.id

    @property
    def needs_labels(self) -> bool:
        return self.kind == self.Kind.BASE

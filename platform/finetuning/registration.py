"""What a succeeded fine-tuning job registers: its fine-tuned model and, when the worker
measured that int8 weights hold the model's accuracy, the model's int8 variant."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from inference.models import AIModel
from workers.contract import INT8_BASE_MODELS

from . import messages
from .models import FineTuneJob

# Characters of the job id's random part in its model's id: 62^12 ids, ~71 bits (8 lower-
# cased ones, ~41 bits, made two jobs' models meet at a million jobs of one base and suffix).
MODEL_ID_TOKEN_CHARS = 12


class ModelIdTaken(ValueError):
    """The model id a job derives is another tenant's, or another mode's: never taken over."""


def model_id_for(job: FineTuneJob, *, base_model: str | None = None) -> str:
    short = job.id.removeprefix("ftjob_")[:MODEL_ID_TOKEN_CHARS]
    base = base_model or job.base_model
    # Four parts whether or not there is a suffix (an empty one, as OpenAI's ids have it):
    # without one the id had three, and a client reading the parts by place misread it.
    return f"ft:{base}:{job.suffix}:{short}"


def int8_model_id_for(job: FineTuneJob) -> str | None:
    """The id the job's int8 variant gets if offered: the fine-tuned model's id with the
    base model's int8 tier in place of the base model (None: no int8 tier to offer)."""
    int8_base = INT8_BASE_MODELS.get(job.base_model)
    return model_id_for(job, base_model=int8_base) if int8_base else None


def _claim(model_id: str, job: FineTuneJob) -> None:
    """A job registers its model again when its event is delivered twice (an update); a row
    under the same id that is another tenant's or mode's is no such thing."""
    owner = AIModel.objects.unscoped().filter(id=model_id).values_list("tenant_id", "livemode")
    found = owner.first()
    if found is not None and found != (job.tenant_id, job.livemode):
        raise ModelIdTaken(model_id)


def fine_tuned_model_register(job: FineTuneJob, result: dict[str, Any]) -> AIModel:
    _claim(model_id_for(job), job)
    model, _ = AIModel.objects.unscoped().update_or_create(
        id=model_id_for(job),
        defaults={
            "tenant_id": job.tenant_id,
            "livemode": job.livemode,
            "kind": AIModel.Kind.FINE_TUNED,
            "base_model": job.base_model,
            "description": f"Fine-tuned ({job.method}) by job {job.id}.",
            "labels": list(result.get("labels") or []),
            "metrics": dict(result.get("metrics") or {}),
            "artifact": str(result["artifact"]),
            "deleted_at": None,
        },
    )
    return model


def int8_variant_offer(job: FineTuneJob, parent: AIModel) -> tuple[str, dict[str, Any]] | None:
    """Register the int8 variant the worker measured, if it loses at most
    ``FINETUNE_INT8_MAX_LOSS_POINTS`` of validation accuracy. Returns the job event that
    says whether it was offered and why (message, data), or None when nothing was measured."""
    metrics = parent.metrics or {}
    variant_id = int8_model_id_for(job)
    delta = metrics.get("int8_accuracy_delta")
    if variant_id is None or isinstance(delta, bool) or not isinstance(delta, int | float):
        return None  # a model on an int8 base already, or a worker that did not measure
    allowed = float(settings.FINETUNE_INT8_MAX_LOSS_POINTS)
    data: dict[str, Any] = {"int8_accuracy_delta": delta, "int8_max_loss_points": allowed}
    if -delta > allowed:
        message = messages.EV_INT8_NOT_OFFERED.format(loss=-delta, allowed=allowed)
        return message, {"int8_model": None, **data}
    _claim(variant_id, job)
    AIModel.objects.unscoped().update_or_create(
        id=variant_id,
        defaults={
            "tenant_id": job.tenant_id,
            "livemode": job.livemode,
            "kind": AIModel.Kind.FINE_TUNED,
            "base_model": INT8_BASE_MODELS[job.base_model],
            "description": messages.INT8_VARIANT_DESCRIPTION.format(parent=parent.id),
            "labels": parent.labels,
            "metrics": {
                "accuracy": metrics.get("int8_accuracy"),
                "macro_f1": metrics.get("int8_macro_f1"),
                "per_label_f1": metrics.get("int8_per_label_f1"),
                "validation_examples": metrics.get("validation_examples"),
                "train_examples": metrics.get("train_examples"),
            },
            "artifact": parent.artifact,
            "parent": parent,
            "accuracy_delta": float(delta),
            "deleted_at": None,
        },
    )
    message = messages.EV_INT8_OFFERED.format(model=variant_id, delta=delta, allowed=allowed)
    return message, {"int8_model": variant_id, **data}

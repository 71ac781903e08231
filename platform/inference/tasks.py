"""The model registry's periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .services import model_files_sweep


@app.task(name="inference.model_files_sweep", acks_late=True)
def model_files_sweep_task() -> int:
    """Release the files of deleted fine-tuned models that no model serves any more."""
    return model_files_sweep()

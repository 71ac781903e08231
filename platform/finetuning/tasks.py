"""Fine-tuning's periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .dispatch import fine_tunes_dispatch_sweep


@app.task(name="finetuning.dispatch_sweep", acks_late=True)
def fine_tunes_dispatch_sweep_task() -> int:
    """Send the waiting fine-tunes whose tenant has a slot free (a lost dispatch)."""
    return fine_tunes_dispatch_sweep()

"""Fine-tuning's periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .dispatch import fine_tunes_dispatch_sweep


@app.task(name="finetuning.dispatch_sweep", acks_late=True)
def fine_tunes_dispatch_sweep_task() -> int:
    """Send the waiting fine-tunes whose tenant has a slot free (a lost dispatch). Lost
    messages are the job-events consumer's to judge: it hears the jobs' starts (a beat
    running while the consumer is down would retry jobs whose start it never heard)."""
    return fine_tunes_dispatch_sweep(lost_messages=False)

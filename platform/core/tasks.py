"""Core's periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .idempotency import idempotency_purge


@app.task(name="core.idempotency_purge", acks_late=True)
def idempotency_purge_task() -> int:
    """Delete idempotency records past any replay; returns how many."""
    return idempotency_purge()

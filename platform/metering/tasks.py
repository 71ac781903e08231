"""Metering's periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .partitions import ledger_partitions_ensure


@app.task(name="metering.ledger_partitions_ensure", acks_late=True)
def ledger_partitions_ensure_task() -> list[str]:
    """Create the ledger's month tables ahead (PostgreSQL); returns the new ones' names."""
    return ledger_partitions_ensure()

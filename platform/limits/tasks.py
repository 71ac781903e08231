"""Limits' periodic tasks, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .holds import quota_holds_release
from .reconcile import quota_reconcile_all


@app.task(name="limits.quota_reconcile_all", acks_late=True)
def quota_reconcile_all_task() -> int:
    """Raise quota counters that lag the ledger; returns how many were raised."""
    return sum(1 for check in quota_reconcile_all() if check.raised_by)


@app.task(name="limits.quota_holds_release", acks_late=True)
def quota_holds_release_task() -> int:
    """Release the quota reservations of calls that never settled; returns how many had
    their inputs given back."""
    return quota_holds_release().refunded

"""Datasets' periodic task, run by the platform worker's beat (config/celery.py)."""

from __future__ import annotations

from config.celery import app

from .services import dataset_files_sweep


@app.task(name="datasets.files_sweep", acks_late=True)
def dataset_files_sweep_task() -> int:
    """Release the files of deleted datasets that nothing refers to any more."""
    return dataset_files_sweep()

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.signals import stop_flag
from finetuning.consumer import JobEventConsumer
from ops.metrics import metrics_serve_from_env


class Command(BaseCommand):
    help = (
        "Apply fine-tuning workers' job events to the jobs, and retry or fail jobs whose "
        "worker stopped sending heartbeats (runs forever)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        metrics_serve_from_env()
        should_stop = stop_flag()
        self.stdout.write("training events consumer: waiting for events")
        JobEventConsumer().run(should_stop=should_stop)
        self.stdout.write("training events consumer: stopped")

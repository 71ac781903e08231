from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from finetuning.consumer import JobEventConsumer


class Command(BaseCommand):
    help = (
        "Apply fine-tuning workers' job events to the jobs, and retry or fail jobs whose "
        "worker stopped sending heartbeats (runs forever)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write("training events consumer: waiting for events")
        JobEventConsumer().run(should_stop=lambda: stopping)
        self.stdout.write("training events consumer: stopped")

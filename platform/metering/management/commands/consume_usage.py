from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from metering.consumer import UsageConsumer


class Command(BaseCommand):
    help = "Consume usage events from the workers and append them to the ledger (runs forever)."

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write("usage consumer: waiting for events")
        UsageConsumer().run(should_stop=lambda: stopping)
        self.stdout.write("usage consumer: stopped")

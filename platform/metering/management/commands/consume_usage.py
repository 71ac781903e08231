from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.signals import stop_flag
from metering.consumer import UsageConsumer


class Command(BaseCommand):
    help = "Consume usage events from the workers and append them to the ledger (runs forever)."

    def handle(self, *args: Any, **options: Any) -> None:
        should_stop = stop_flag()
        self.stdout.write("usage consumer: waiting for events")
        UsageConsumer().run(should_stop=should_stop)
        self.stdout.write("usage consumer: stopped")

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection

from core.signals import stop_flag
from metering.consumer import UsageConsumer, default_name
from ops.metrics import metrics_serve_from_env


class Command(BaseCommand):
    help = "Consume usage events from the workers and append them to the ledger (runs forever)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name",
            default=None,
            help=(
                f"this consumer's name in the group (default: the host's, {default_name()!r}); "
                "the same after a restart, so that it stores at once what it had read and not "
                "acknowledged. Give each consumer on one host its own."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["name"] is not None and not options["name"].strip():
            # (An empty name was the host's: the very member another consumer on it reads as.)
            raise CommandError("--name must not be empty: give this consumer a name of its own.")
        metrics_serve_from_env()
        should_stop = stop_flag()
        consumer = UsageConsumer(name=options["name"])
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            # (It said "waiting for events" and nothing more until the first batch failed.)
            detail = (str(exc).strip().splitlines() or ["no detail"])[0]
            self.stderr.write(
                f"usage consumer: the database cannot be reached ({type(exc).__name__}: "
                f"{detail}); events wait in Redis and are stored once it can be"
            )
        self.stdout.write(f"usage consumer {consumer.name!r}: waiting for events")
        consumer.run(should_stop=should_stop)
        self.stdout.write("usage consumer: stopped")

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from config.celery import PLATFORM_QUEUE, app
from ops.metrics import metrics_serve_from_env


class Command(BaseCommand):
    help = (
        "The platform's Celery worker (queue 'platform': billing webhooks, usage pushes, "
        "reconciliation), with the beat schedule embedded unless --no-beat. Equivalent to "
        "`celery -A config.celery worker -Q platform -B` with platform/ and the repository "
        "root on the Python path, which manage.py provides."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--no-beat", action="store_true", help="Run beat separately.")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        metrics_serve_from_env()
        argv = ["worker", "-Q", PLATFORM_QUEUE, "-n", "platform@%h", "-P", "threads",
                "-c", str(options["concurrency"]), "--loglevel", options["loglevel"],
                "--without-gossip", "--without-mingle"]  # fmt: skip
        if not options["no_beat"]:
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
            argv += ["-B", "-s", str(settings.DATA_DIR / "celerybeat-schedule")]
        app.worker_main(argv)

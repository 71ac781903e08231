from typing import Any

from django.core.management.base import BaseCommand

from economics.services import rollups_rebuild


class Command(BaseCommand):
    help = "Recompute the daily usage rollups from the ledger (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"rebuilt {rollups_rebuild()} rollup rows from the ledger")

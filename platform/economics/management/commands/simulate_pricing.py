from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from economics.simulation import day_parse, prices_parse, range_check, simulation_report


class Command(BaseCommand):
    help = (
        "Replay a past period of the ledger under proposed plan prices and report revenue, "
        "cost and margin per tenant and in total (per currency), against actual. PRICES is a "
        'JSON file like {"pro": {"base_fee": 3900, "included_inputs": 50000}}.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="a date (whole UTC day), inclusive")
        parser.add_argument("--end", required=True, help="a date (whole UTC day), exclusive")
        parser.add_argument("--prices", required=True, help="JSON file of plan overrides")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = day_parse(options["start"]), day_parse(options["end"])
            range_check(start, end)
            proposed = prices_parse(Path(options["prices"]).read_text())
            report = simulation_report(start=start, end=end, proposed=proposed)
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(report)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from economics.selectors import pricing_simulate
from economics.simulation import format_report, moment_parse, proposed_validate


class Command(BaseCommand):
    help = (
        "Replay a past period of the ledger under proposed plan prices and report revenue, "
        "cost and margin per tenant and in total, against actual. PRICES is a JSON file "
        'like {"pro": {"base_fee": 3900, "included_inputs": 50000}}.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="ISO date, inclusive")
        parser.add_argument("--end", required=True, help="ISO date, exclusive")
        parser.add_argument("--prices", required=True, help="JSON file of plan overrides")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = moment_parse(options["start"]), moment_parse(options["end"])
            if start >= end:
                raise ValueError("--start must be before --end")
            proposed = proposed_validate(json.loads(Path(options["prices"]).read_text()))
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(format_report(pricing_simulate(start=start, end=end, proposed=proposed)))

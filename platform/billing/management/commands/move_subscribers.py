from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.versions import subscribers_move_to_current
from plans.models import Plan


class Command(BaseCommand):
    help = (
        "Move every subscriber of an older version of a plan onto its current version "
        "(a plan change each, prorated in Stripe)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the plan, e.g. pro")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = Plan.objects.filter(slug=options["slug"], is_current=True).first()
        if plan is None:
            raise CommandError(f"No plan {options['slug']!r} has a current version.")
        result = subscribers_move_to_current(plan=plan)
        for tenant_id in result.moved:
            self.stdout.write(f"{tenant_id}: moved to {plan.pk}")
        for tenant_id, why in result.refused:
            self.stderr.write(f"{tenant_id}: not moved: {why}")
        self.stdout.write(f"{len(result.moved)} moved to {plan.pk}, {len(result.refused)} not")
        if result.refused:
            raise CommandError(f"{len(result.refused)} subscribers were not moved (above).")

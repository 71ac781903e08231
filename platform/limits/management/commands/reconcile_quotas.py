from typing import Any

from django.core.management.base import BaseCommand

from limits.reconcile import quota_reconcile_all


class Command(BaseCommand):
    help = "Raise quota counters that lag behind the usage ledger (runs periodically)."

    def handle(self, *args: Any, **options: Any) -> None:
        checks = quota_reconcile_all()
        drifted = [c for c in checks if c.raised_by]
        self.stdout.write(f"checked {len(checks)} capped tenants; {len(drifted)} counters raised")
        for check in drifted:
            self.stdout.write(
                f"  {check.tenant_id}: +{check.raised_by} (ledger {check.ledger_inputs})"
            )

from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from limits.reconcile import quota_reconcile_all


class Command(BaseCommand):
    help = "Raise quota counters that lag behind the usage ledger (runs periodically)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            checks = quota_reconcile_all()
        except redis.ConnectionError as exc:
            raise CommandError(
                f"Redis at {settings.REDIS_URL} cannot be reached ({exc}): start the product"
                " (make run) or set REDIS_URL"
            ) from exc
        drifted = [c for c in checks if c.raised_by]
        self.stdout.write(f"checked {len(checks)} capped tenants; {len(drifted)} counters raised")
        for check in drifted:
            self.stdout.write(
                f"  {check.tenant_id}: +{check.raised_by} (ledger {check.ledger_inputs})"
            )

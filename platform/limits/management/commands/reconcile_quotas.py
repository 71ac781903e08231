from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from limits.holds import quota_holds_release
from limits.reconcile import quota_reconcile_all


class Command(BaseCommand):
    help = (
        "Release the quota reservations of calls that never settled, then raise quota"
        " counters that lag behind the usage ledger (both run periodically)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            released = quota_holds_release()
            checks = quota_reconcile_all()
        except redis.ConnectionError as exc:
            raise CommandError(
                f"Redis at {settings.REDIS_URL} cannot be reached ({exc}): start the product"
                " (make run) or set REDIS_URL"
            ) from exc
        self.stdout.write(
            f"released {released.refunded + released.kept} unsettled reservations:"
            f" {released.refunded_inputs} inputs back ({released.refunded} calls not in the"
            f" ledger), {released.kept} calls in the ledger kept"
        )
        drifted = [c for c in checks if c.raised_by]
        self.stdout.write(f"checked {len(checks)} capped tenants; {len(drifted)} counters raised")
        for check in drifted:
            self.stdout.write(
                f"  {check.tenant_id}: +{check.raised_by} (ledger {check.ledger_inputs})"
            )

"""Reports and pushes read whole days from the rollups (metering.sums); reconciliation reads
the ledger itself, so rollups that drifted from it (a restore without rebuild_rollups) show
as a difference with Stripe rather than pass unseen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from billing.invoicing import usage_charges_push
from billing.models import Subscription
from billing.reconciliation import reconciliation_run
from billing.subscriptions import subscription_change
from economics.models import UsageRollup
from metering.services import usage_record_bulk
from metering.sums import usage_sums

pytestmark = pytest.mark.django_db


def test_drifted_rollups_are_pushed_and_reconciliation_finds_them_out(tenant, stripe_api):
    """Rollups that drifted from the ledger (a restore without ``rebuild_rollups``): the
    report and the push follow the rollups, reconciliation the ledger, and says so."""
    subscription_change(tenant=tenant, plan_slug="pro")
    now = timezone.now()
    Subscription.objects.for_tenant(tenant).update(
        current_period_start=now - timedelta(days=4), current_period_end=now + timedelta(days=26)
    )
    day = (now - timedelta(days=2)).astimezone(UTC).date()
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    usage_record_bulk(events=[{
        "v": 1, "event_id": f"req_{uuid.uuid4().hex[:24]}", "kind": "inference",
        "tenant_id": tenant.pk, "api_key_id": "key_a", "livemode": True, "model": "minilm-l6",
        "inputs": 10, "tokens": 100, "compute_ms": 1.0, "cached": 0, "cost_micros": "1",
        "occurred_at": at.isoformat(),
    }])  # fmt: skip
    UsageRollup.objects.for_tenant(tenant).filter(day=day).update(inputs=110_010)
    whole = {"start": at - timedelta(days=1), "end": now, "tenant": tenant, "livemode": True}
    assert usage_sums(**whole)[0]["inputs"] == 110_010
    assert usage_sums(**whole, from_ledger=True)[0]["inputs"] == 10
    # A part day is read from the ledger: the rollup's drift is not in it.
    noon = {"start": at - timedelta(hours=1), "end": at + timedelta(hours=1)}
    assert usage_sums(tenant=tenant, livemode=True, **noon)[0]["inputs"] == 10
    # 10,010 past pro's 100,000 included, at 40 per 1,000 (whole thousands): the push.
    [push] = usage_charges_push(tenant=tenant)
    assert (push.line, push.amount) == ("usage:standard", 400)
    row = reconciliation_run(tenant=tenant)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (0, 400, -400)

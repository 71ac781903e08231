"""Reports read whole days from the rollups (metering.sums); the usage pushes and
reconciliation read the ledger itself, so rollups that drifted from it (a restore without
rebuild_rollups) never reach an invoice, and reconciliation says they drifted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from billing.invoicing import usage_charges_push
from billing.models import Subscription
from billing.reconciliation import reconciliation_run
from billing.subscriptions import subscription_change
from economics.models import UsageRollup
from metering.services import usage_record_bulk
from metering.sums import usage_sums

pytestmark = pytest.mark.django_db


def test_drifted_rollups_never_reach_stripe_and_reconciliation_says_so(tenant, stripe_api, caplog):
    """The report follows the rollups (whole days), the push and reconciliation the ledger;
    reconciliation logs and counts the drift, naming the command that mends it."""
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
        "inputs": 110_010, "tokens": 100, "compute_ms": 1.0, "cached": 0, "cost_micros": "1",
        "occurred_at": at.isoformat(),
    }])  # fmt: skip
    UsageRollup.objects.for_tenant(tenant).filter(day=day).update(inputs=10)
    whole = {"start": at - timedelta(days=1), "end": now, "tenant": tenant, "livemode": True}
    assert usage_sums(**whole)[0]["inputs"] == 10
    assert usage_sums(**whole, from_ledger=True)[0]["inputs"] == 110_010
    # A part day is read from the ledger: the rollup's drift is not in it.
    noon = {"start": at - timedelta(hours=1), "end": at + timedelta(hours=1)}
    assert usage_sums(tenant=tenant, livemode=True, **noon)[0]["inputs"] == 110_010
    # 10,010 past pro's 100,000 included, at 40 per 1,000 (whole thousands): the ledger's.
    [push] = usage_charges_push(tenant=tenant)
    assert (push.line, push.amount) == ("usage:standard", 400)
    drift = REGISTRY.get_sample_value("usage_rollup_drift_total") or 0
    row = reconciliation_run(tenant=tenant)
    assert (row.ledger_amount, row.stripe_amount, row.difference) == (400, 400, 0)
    assert REGISTRY.get_sample_value("usage_rollup_drift_total") == drift + 1
    assert "run manage.py rebuild_rollups" in caplog.text

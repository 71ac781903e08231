"""metering.sums: reports and rating read whole UTC days from the rollups and only the part
days at a range's ends from the ledger, and come to exactly what the ledger says, voids
included (tests/billing/test_rollup_drift.py: reconciliation reads the ledger itself)."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from billing.rating import rate_tenant_period
from economics.services import rollups_rebuild
from metering.corrections import usage_record_void
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from metering.sums import usage_sums
from plans.models import Plan
from tests.factories import subscribe

pytestmark = pytest.mark.django_db

GROUPINGS = [(), ("day",), ("model",), ("api_key_id",), ("plan_id", "kind", "model"),
             ("day", "plan_id", "kind", "model")]  # fmt: skip


def _events(tenant, rng, now, n):
    events = []
    for _ in range(n):
        kind = "fine_tune" if rng.random() < 0.05 else "inference"
        inputs = rng.randint(1, 96)
        events.append({
            "v": 1, "event_id": f"req_{uuid.uuid4().hex[:24]}", "kind": kind,
            "tenant_id": tenant.pk, "api_key_id": rng.choice(["key_a", "key_b"]),
            "livemode": rng.random() < 0.85,
            "model": rng.choice(["minilm-l6", "minilm-l6-int8", "ft:minilm-l6:acme:1"]),
            "inputs": inputs, "tokens": inputs * rng.randint(5, 40),
            "compute_ms": round(rng.uniform(0.5, 40), 3), "cached": rng.randint(0, inputs),
            "cost_micros": "12.5",
            "occurred_at": (now - timedelta(seconds=rng.uniform(0, 5 * 86_400))).isoformat(),
        })  # fmt: skip
    return events


def _keyed(rows, by):
    return {tuple(row[name] for name in by): row for row in rows}


def _same(rows, ledger, by):
    got, want = _keyed(rows, by), _keyed(ledger, by)
    assert got.keys() == want.keys()
    for group, row in got.items():
        for name in ("requests", "inputs", "cached", "tokens"):
            assert row[name] == want[group][name], (by, group, name)
        assert math.isclose(row["compute_ms"], want[group]["compute_ms"], abs_tol=1e-6)


def test_any_range_and_grouping_comes_to_what_the_ledger_says(tenant):
    rng = random.Random(20261130)
    now = timezone.now()
    outcome = usage_record_bulk(events=_events(tenant, rng, now, 400))
    assert outcome.inserted == 400
    live = list(
        UsageRecord.objects.for_tenant(tenant)
        .filter(livemode=True, corrects="")
        .values_list("event_id", flat=True)
    )
    for event_id in rng.sample(live, 12):
        usage_record_void(event_id=event_id, reason="a test of the sums")
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ranges = [
        (midnight - timedelta(days=3), midnight),
        (midnight - timedelta(days=6), now),
        (now - timedelta(hours=5), now),
        (midnight - timedelta(days=1), midnight),
    ]
    for _ in range(30):
        a = now - timedelta(seconds=rng.uniform(0, 6 * 86_400))
        ranges.append((a, a + timedelta(seconds=rng.uniform(0, 4 * 86_400))))
    for start, end in ranges:
        for by in GROUPINGS:
            for livemode in (True, False):
                rows = usage_sums(tenant=tenant, livemode=livemode, start=start, end=end, by=by)
                ledger = usage_sums(
                    tenant=tenant, livemode=livemode, start=start, end=end, by=by,
                    from_ledger=True,
                )  # fmt: skip
                _same(rows, ledger, by)
    # The whole of it, and a range with nothing in it (one row of zeros without grouping).
    week = usage_sums(tenant=tenant, livemode=True, start=now - timedelta(days=7), end=now)
    assert week[0]["requests"] == len(live) and week[0]["inputs"] > 0
    empty = usage_sums(
        tenant=tenant, livemode=True, start=now + timedelta(days=2), end=now + timedelta(days=5)
    )
    assert empty == [{"requests": 0, "inputs": 0, "cached": 0, "tokens": 0, "compute_ms": 0.0}]


def test_a_row_from_before_plans_were_recorded_is_priced_the_same_either_way(tenant):
    """A row with no plan (before rows recorded theirs) is priced under the plan rating is
    given; its rollup carries the plan it was summed under (free here, then the tenant moved
    to pro): such a range is read from the ledger alone, so both ways agree."""
    now = timezone.now()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    UsageRecord.objects.create(
        event_id="req_legacy", kind="inference", tenant=tenant, api_key_id="key_x",
        livemode=True, model="minilm-l6", inputs=250_000, tokens=10, compute_ms=1.0,
        occurred_at=midnight - timedelta(days=2) + timedelta(hours=12), plan_id="",
    )  # fmt: skip
    rollups_rebuild()  # (on free now: its rollup says free)
    subscribe(tenant, "pro")
    pro = Plan.objects.get(slug="pro", is_current=True)
    week = {"tenant": tenant, "plan": pro, "start": midnight - timedelta(days=5), "end": now}
    read = rate_tenant_period(**week, include_base_fee=False)
    ledger = rate_tenant_period(**week, include_base_fee=False, from_ledger=True)
    assert read.usage_total == ledger.usage_total == 6000  # 150,000 past pro's 100,000

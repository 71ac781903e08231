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
from economics.models import UsageRollup
from economics.services import rollups_rebuild
from metering.corrections import usage_record_void
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from metering.sums import usage_sums
from plans.models import Plan
from tests.factories import rollups_unkeyed, subscribe

pytestmark = pytest.mark.django_db

GROUPINGS = [(), ("day",), ("model",), ("api_key_id",), ("plan_id", "kind", "model"),
             ("day", "plan_id", "kind", "model"), ("day", "api_key_id"),
             ("api_key_id", "plan_id", "kind", "model")]  # fmt: skip


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


def _all_agree(tenant, ranges):
    for start, end in ranges:
        for by in GROUPINGS:
            for livemode in (True, False):
                rows = usage_sums(tenant=tenant, livemode=livemode, start=start, end=end, by=by)
                ledger = usage_sums(
                    tenant=tenant, livemode=livemode, start=start, end=end, by=by,
                    from_ledger=True,
                )  # fmt: skip
                _same(rows, ledger, by)


def _void_some(tenant, rng, n, before=None):
    live = UsageRecord.objects.for_tenant(tenant).filter(livemode=True, corrects="")
    if before is not None:
        live = live.filter(occurred_at__lt=before)
    voided = UsageRecord.objects.for_tenant(tenant).exclude(corrects="").values("corrects")
    candidates = list(live.exclude(event_id__in=voided).values_list("event_id", flat=True))
    for event_id in rng.sample(candidates, n):
        usage_record_void(event_id=event_id, reason="a test of the sums")


def test_any_range_and_grouping_comes_to_what_the_ledger_says(tenant):
    """Rollups keyed (as the consumer writes them), partly unkeyed (days summed before the
    key joined their grain, voided since), then rebuilt: every range and grouping, by key
    included, comes to what the ledger says."""
    rng = random.Random(20261130)
    now = timezone.now()
    outcome = usage_record_bulk(events=_events(tenant, rng, now, 400))
    assert outcome.inserted == 400
    _void_some(tenant, rng, 12)
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
    _all_agree(tenant, ranges)
    # The upgrade: the days before the last two were summed without their key.
    upgraded = midnight - timedelta(days=2)
    rollups_unkeyed(tenant=tenant, before=upgraded.date())
    assert UsageRollup.objects.for_tenant(tenant).filter(api_key_id="").count() > 10
    _void_some(tenant, rng, 6, before=upgraded)  # events of the unkeyed days
    _void_some(tenant, rng, 3)
    _all_agree(tenant, ranges)
    # rebuild_rollups keys every row, and the sums stay the ledger's.
    rollups_rebuild()
    assert not UsageRollup.objects.for_tenant(tenant).filter(api_key_id="").exists()
    assert UsageRollup.objects.for_tenant(tenant).filter(api_key_id="key_b").exists()
    _all_agree(tenant, ranges)
    # The whole of it, and a range with nothing in it (one row of zeros without grouping).
    week = usage_sums(tenant=tenant, livemode=True, start=now - timedelta(days=7), end=now)
    calls = UsageRecord.objects.for_tenant(tenant).filter(livemode=True, corrects="").count()
    assert week[0]["requests"] == calls and week[0]["inputs"] > 0
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


def test_usage_by_api_key_reads_the_same_from_rollups_as_from_the_ledger(tenant, client_for):
    """/v1/usage?group_by=api_key: with every rollup from before the upgrade (unkeyed: the
    report reads the ledger), then keyed by rebuild_rollups (it reads the rollups), the
    bodies are the same, amounts included, over ranges with part days at their ends."""
    subscribe(tenant, "pro")
    rng = random.Random(7)
    now = timezone.now()
    events = _events(tenant, rng, now, 300)
    for e in events:
        e["inputs"] *= 40  # past pro's included inputs
        e["api_key_id"] = rng.choice(["key_a", "key_b", "key_c"])
    assert usage_record_bulk(events=events).inserted == 300
    _void_some(tenant, rng, 5)
    api = client_for(tenant, ["billing"])
    ranges = [
        {"start": (now - timedelta(days=6)).isoformat(), "end": now.isoformat()},
        {"start": (now - timedelta(days=4, hours=7)).isoformat(),
         "end": (now - timedelta(hours=30)).isoformat()},
    ]  # fmt: skip

    def bodies():
        return [api.get("/v1/usage", {**r, "group_by": "api_key"}).json() for r in ranges]

    rollups_unkeyed(tenant=tenant, before=(now + timedelta(days=1)).date())
    from_ledger = bodies()
    rollups_rebuild()
    assert not UsageRollup.objects.for_tenant(tenant).filter(api_key_id="").exists()
    assert bodies() == from_ledger
    week = from_ledger[0]
    assert {row["api_key"] for row in week["data"]} == {"key_a", "key_b", "key_c"}
    assert week["total"]["amount"] > 0
    assert sum(row["amount"] for row in week["data"]) == week["total"]["amount"]

"""What the usage consumer sets aside: every rejected event goes to the dead-letter list
as it came (with why), so an operator can replay it once its cause is fixed; the stream
entry itself is deleted."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
import redis

from metering.consumer import DEAD_LETTER_KEY, UsageConsumer
from metering.models import UsageRecord
from tenants.models import Tenant
from workers.contract import USAGE_STREAM

pytestmark = pytest.mark.django_db


def _event(tenant_id: str, event_id: str) -> dict[str, object]:
    return {
        "v": 1,
        "event_id": event_id,
        "kind": "inference",
        "tenant_id": tenant_id,
        "api_key_id": "key_x",
        "livemode": True,
        "model": "minilm-l6",
        "inputs": 7,
        "tokens": 70,
        "compute_ms": 1.5,
        "cached": 0,
        "occurred_at": datetime(2026, 11, 2, 12, tzinfo=UTC).isoformat(),
        "worker": "w1",
        "cost_micros": "1.5000",
        "pool": "cpu",
    }


@pytest.fixture
def client():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(USAGE_STREAM, DEAD_LETTER_KEY)
    yield client
    client.delete(USAGE_STREAM, DEAD_LETTER_KEY)


def _drain() -> int:
    return UsageConsumer(flush_interval=0.05).run(until_idle=True)


def _dead(client) -> list[dict[str, object]]:
    return [json.loads(item) for item in client.lrange(DEAD_LETTER_KEY, 0, -1)]


def test_an_event_for_an_unknown_tenant_is_dead_lettered_whole_and_can_be_replayed(tenant, client):
    known, unknown = _event(tenant.pk, "req_known"), _event("ten_later", "req_unknown")
    for body in (known, unknown):
        client.xadd(USAGE_STREAM, {"event": json.dumps(body)})
    assert _drain() == 1
    assert client.xlen(USAGE_STREAM) == 0  # acknowledged and deleted: the list is all left
    assert _dead(client) == [{"event": unknown, "why": "unknown tenant 'ten_later'"}]

    # The tenant exists now (say, its creation was late): replaying the entry stores it.
    later = Tenant.objects.create(id="ten_later", name="Later", slug="later")
    client.xadd(USAGE_STREAM, {"event": json.dumps(_dead(client)[0]["event"])})
    assert _drain() == 1
    row = UsageRecord.objects.for_tenant(later).get(event_id="req_unknown")
    assert (row.inputs, row.tokens, row.model) == (7, 70, "minilm-l6")


def test_an_event_rejected_before_parsing_is_dead_lettered_as_it_came(tenant, client):
    bad = {**_event(tenant.pk, "req_bad"), "inputs": -1}
    client.xadd(USAGE_STREAM, {"event": json.dumps(bad)})
    assert _drain() == 0
    assert _dead(client) == [
        {"event": bad, "why": "inputs, tokens and cached must be non-negative integers in range"}
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inputs", 2**31),
        ("cached", 2**31),
        ("tokens", 2**31),
        ("cost_micros", "1e17"),
        ("compute_ms", 1e13),
    ],
)
def test_an_event_past_a_ledger_column_is_dead_lettered_and_its_batch_stored(
    tenant, client, field, value
):
    # One value the ledger's column cannot hold failed the whole batch's insert, every time
    # it was claimed again, and the good events beside it with it.
    good, bad = _event(tenant.pk, "req_good"), {**_event(tenant.pk, "req_big"), field: value}
    for body in (bad, good):
        client.xadd(USAGE_STREAM, {"event": json.dumps(body)})
    assert _drain() == 1
    assert UsageRecord.objects.for_tenant(tenant).get(event_id="req_good").inputs == 7
    assert [entry["event"]["event_id"] for entry in _dead(client)] == ["req_big"]

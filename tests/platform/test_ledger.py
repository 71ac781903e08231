"""The usage consumer against real Redis and the real database: bulk insert, exactly one
row per event id however often it is delivered, poison messages set aside."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
import redis

from metering.consumer import DEAD_LETTER_KEY, UsageConsumer
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from workers.contract import USAGE_STREAM

pytestmark = pytest.mark.django_db


def event(tenant, n: int, **overrides):
    return {
        "v": 1,
        "event_id": f"req_test{n}",
        "kind": "inference",
        "tenant_id": tenant.pk,
        "api_key_id": "key_x",
        "livemode": True,
        "model": "minilm-l6",
        "inputs": 2,
        "tokens": 20,
        "compute_ms": 3.5,
        "cached": 0,
        "occurred_at": datetime.now(UTC).isoformat(),
        "worker": "w1",
        **overrides,
    }


def publish(*events) -> None:
    """What workers do: append each event (any JSON) to the usage stream."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    for body in events:
        client.xadd(USAGE_STREAM, {"event": json.dumps(body)})


def drain() -> int:
    return UsageConsumer(flush_interval=0.05).run(until_idle=True)


@pytest.fixture(autouse=True)
def empty_queue():
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(USAGE_STREAM, DEAD_LETTER_KEY)
    yield
    client.delete(USAGE_STREAM, DEAD_LETTER_KEY)


def test_each_event_becomes_one_ledger_row(tenant):
    publish(*(event(tenant, n) for n in range(50)))
    assert drain() == 50
    rows = UsageRecord.objects.for_tenant(tenant)
    assert rows.count() == 50
    row = rows.get(event_id="req_test7")
    assert (row.inputs, row.tokens, row.compute_ms, row.model) == (2, 20, 3.5, "minilm-l6")


def test_cost_to_serve_is_stored_beside_the_usage(tenant):
    from decimal import Decimal

    publish(event(tenant, 1, cost_micros="2.5000", pool="gpu-h200"), event(tenant, 2))
    drain()
    rows = {r.event_id: r for r in UsageRecord.objects.for_tenant(tenant)}
    assert rows["req_test1"].cost_micros == Decimal("2.5") and rows["req_test1"].pool == "gpu-h200"
    assert rows["req_test2"].cost_micros == 0  # an older producer that did not cost it


def test_a_redelivered_event_is_not_counted_twice(tenant):
    publish(event(tenant, 1), event(tenant, 1))
    drain()
    publish(event(tenant, 1))  # delivered again later, after the first was stored
    drain()
    assert UsageRecord.objects.for_tenant(tenant).filter(event_id="req_test1").count() == 1


def test_an_event_read_but_never_acknowledged_is_delivered_again(tenant):
    from workers.contract import USAGE_GROUP

    publish(event(tenant, 1), event(tenant, 2))
    dead = UsageConsumer(name="crashed")
    dead._ensure_group()
    assert len(dead._read(">", None)) == 2  # read, then the process died before storing
    assert UsageRecord.objects.for_tenant(tenant).count() == 0
    # Restarted under the same name it re-reads its own pending entries first.
    assert UsageConsumer(name="crashed", flush_interval=0.05).run(until_idle=True) == 2
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert client.xpending(USAGE_STREAM, USAGE_GROUP)["pending"] == 0
    assert client.xlen(USAGE_STREAM) == 0  # acknowledged entries are deleted


def test_poison_events_are_dead_lettered_and_do_not_block_the_rest(tenant):
    publish(
        event(tenant, 1),
        {"garbage": True},
        event(tenant, 2, inputs=-1),
        event(tenant, 3, tenant_id="ten_unknown"),
        event(tenant, 4, occurred_at="yesterday"),
        event(tenant, 6, cost_micros="-1"),
        event(tenant, 7, cost_micros="lots"),
        event(tenant, 5),
    )
    assert drain() == 2
    assert set(UsageRecord.objects.for_tenant(tenant).values_list("event_id", flat=True)) == {
        "req_test1",
        "req_test5",
    }
    dead = redis.Redis.from_url(os.environ["REDIS_URL"]).lrange(DEAD_LETTER_KEY, 0, -1)
    assert len(dead) == 6
    assert all("why" in json.loads(item) for item in dead)


def test_bulk_insert_counts_duplicates(tenant):
    first = usage_record_bulk(events=[event(tenant, n) for n in range(3)])
    again = usage_record_bulk(events=[event(tenant, n) for n in range(5)])
    assert (first.inserted, first.duplicates) == (3, 0)
    assert (again.inserted, again.duplicates) == (2, 3)


def test_usage_api_groups_and_totals(tenant, client_for):
    now = datetime.now(UTC)
    usage_record_bulk(
        events=[
            event(tenant, 1, model="minilm-l6", api_key_id="key_a"),
            event(tenant, 2, model="minilm-l6", api_key_id="key_b"),
            event(
                tenant,
                3,
                model="ft:minilm-l6:x:1",
                api_key_id="key_a",
                occurred_at=(now - timedelta(days=1)).isoformat(),
            ),
            event(tenant, 4, livemode=False),  # test-mode usage is reported to test keys only
        ]
    )
    api = client_for(tenant, ["billing"])
    start = (now - timedelta(days=3)).isoformat()
    body = api.get("/v1/usage", {"group_by": "model", "start": start}).json()
    assert body["total"]["requests"] == 3 and body["total"]["inputs"] == 6
    assert {row["model"]: row["requests"] for row in body["data"]} == {
        "minilm-l6": 2,
        "ft:minilm-l6:x:1": 1,
    }
    assert body["total"]["currency"] == "usd" and body["total"]["amount"] == 0
    by_key = api.get("/v1/usage", {"group_by": "api_key", "start": start}).json()
    assert {row["api_key"]: row["requests"] for row in by_key["data"]} == {"key_a": 2, "key_b": 1}
    by_day = api.get("/v1/usage", {"group_by": "day", "start": start}).json()
    assert sorted(row["requests"] for row in by_day["data"]) == [1, 2]
    test_mode = client_for(tenant, ["billing"], mode="test").get("/v1/usage", {"start": start})
    assert test_mode.json()["total"]["requests"] == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"group_by": ""}, "group_by"),
        ({"start": "last tuesday"}, "start"),
        ({"end": "2026-13-45"}, "end"),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "start"),
    ],
)
def test_usage_api_rejects_bad_parameters(tenant, client_for, params, param):
    response = client_for(tenant, ["billing"]).get("/v1/usage", params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_usage_api_sees_only_its_own_tenant(tenant, other_tenant, client_for):
    usage_record_bulk(events=[event(other_tenant, 1)])
    body = client_for(tenant, ["billing"]).get("/v1/usage").json()
    assert body["total"]["requests"] == 0

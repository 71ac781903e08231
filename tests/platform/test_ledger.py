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


def test_usage_is_stamped_with_the_plan_its_call_was_admitted_under(tenant):
    """However late an event is recorded (a consumer that was down while the tenant changed
    plan), its call stays on the plan it was admitted under; an event that names no plan,
    or one this database lacks, gets the tenant's plan now."""
    from economics.models import UsageRollup
    from tests.factories import subscribe

    subscribe(tenant, "scale")
    publish(
        event(tenant, 1, plan_id="pro@1"),
        event(tenant, 2),
        event(tenant, 3, plan_id="gone@7"),
    )
    drain()
    rows = {r.event_id: r.plan_id for r in UsageRecord.objects.for_tenant(tenant)}
    assert rows == {"req_test1": "pro@1", "req_test2": "scale@1", "req_test3": "scale@1"}
    rollups = UsageRollup.objects.for_tenant(tenant)
    assert {(r.plan_id, r.inputs) for r in rollups} == {("pro@1", 2), ("scale@1", 4)}


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
            event(tenant, 2, model="minilm-l6", api_key_id="key_b", cached=1),
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
    # Of them answered from the result cache: billed or not as the plan says.
    assert body["total"]["cached"] == 1
    assert {row["model"]: row["cached"] for row in body["data"]} == {
        "minilm-l6": 1,
        "ft:minilm-l6:x:1": 0,
    }
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


# Any start and end a client may send per the published schema: years 0001-9999 at any
# offset, RFC 3339's variants, unix seconds of any size. Ranges wider than the ledger are
# clamped to where usage can exist, never a 500 and never work that grows with the range.
FIRST, LAST = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"


def two_priced_months(tenant):
    """Pro plan, 100,000 inputs included a month: January 2025 has 500 over (20 minor
    units at 40 per 1,000), February 1,000 over (40); test-mode usage is never charged."""
    from tests.factories import subscribe

    subscribe(tenant, "pro")
    usage_record_bulk(
        events=[
            event(tenant, 1, inputs=100_000, occurred_at="2025-01-15T12:00:00+00:00"),
            event(tenant, 2, inputs=500, occurred_at="2025-01-31T23:59:59+00:00"),
            event(tenant, 3, inputs=101_000, occurred_at="2025-02-01T00:00:00+00:00"),
            event(tenant, 4, inputs=7, livemode=False, occurred_at="2025-02-03T00:00:00+00:00"),
        ]
    )


def usage_and_queries(client, params):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/v1/usage", params)
    assert response.status_code == 200, response.content
    return response.json(), len(queries.captured_queries)


@pytest.mark.parametrize("group_by", ["day", "model", "api_key"])
@pytest.mark.parametrize(
    "widest",
    [
        {"start": "0001-01-01T00:00:00+05:00", "end": "9999-12-31T23:59:59-05:00"},
        {"start": "-99999999999999999999", "end": "99999999999999999999"},
        {"start": "0001-01-01", "end": "9999-12-31"},
    ],
)
def test_usage_api_a_huge_range_costs_and_counts_what_the_ledger_holds(
    tenant, client_for, widest, group_by
):
    two_priced_months(tenant)
    api = client_for(tenant, ["billing"])
    tight, tight_queries = usage_and_queries(
        api, {"start": "2025-01-01", "end": "2025-03-01", "group_by": group_by}
    )
    assert tight["total"]["amount"] == 60 and tight["total"]["inputs"] == 201_500
    wide, wide_queries = usage_and_queries(api, {**widest, "group_by": group_by})
    assert (wide["data"], wide["total"]) == (tight["data"], tight["total"])
    assert wide_queries <= tight_queries  # the work follows the ledger, not the range
    assert wide["start"] == FIRST


def test_usage_api_the_fuzzers_500s_are_answered(tenant, client_for):
    usage_record_bulk(events=[event(tenant, 1)])
    api = client_for(tenant, ["billing"])
    year_one = api.get("/v1/usage?start=0001-01-01T00:00:00%2B05:00")
    assert year_one.status_code == 200, year_one.content
    assert year_one.json()["start"] == FIRST and year_one.json()["total"]["requests"] == 1
    far_end = api.get("/v1/usage?start=2000-01-01&end=9999-12-31T23:59:59-05:00")
    assert far_end.status_code == 200, far_end.content
    assert far_end.json()["end"] == LAST and far_end.json()["total"]["requests"] == 1
    # Without start, the range is end's month: December 9999, empty.
    last_month = api.get("/v1/usage?end=9999-12-31T23:59:59-05:00").json()
    assert last_month["start"] == "9999-12-01T00:00:00Z" and last_month["end"] == LAST
    assert last_month["total"]["requests"] == 0


@pytest.mark.parametrize(
    ("end", "start"),
    [
        ("2000-01-01T00:00:00Z", "1999-12-01T00:00:00Z"),  # exclusive: December's last instant
        ("2025-02-15", "2025-02-01T00:00:00Z"),
        ("2025-03-01T00:00:00.000001Z", "2025-03-01T00:00:00Z"),
        ("2025-03-01T02:00:00+05:00", "2025-02-01T00:00:00Z"),  # 21:00 UTC on Feb 28
    ],
)
def test_usage_api_without_start_reports_the_month_end_falls_in(tenant, client_for, end, start):
    # A past end alone is a question about that month, not a 400 for being before this one.
    response = client_for(tenant, ["billing"]).get("/v1/usage", {"end": end})
    assert response.status_code == 200, response.content
    assert response.json()["start"] == start


def test_usage_api_compares_moments_before_clamping_them(tenant, client_for):
    api = client_for(tenant, ["billing"])
    # 0001-01-01T00:00+06:00 is an hour before +05:00, both before datetime's first UTC
    # instant: a valid range that holds no usage.
    empty = api.get(
        "/v1/usage", {"start": "0001-01-01T00:00:00+06:00", "end": "0001-01-01T00:00:00+05:00"}
    )
    assert empty.status_code == 200 and empty.json()["total"]["requests"] == 0
    backwards = api.get(
        "/v1/usage", {"start": "0001-01-01T00:00:00+05:00", "end": "0001-01-01T00:00:00+06:00"}
    )
    assert backwards.status_code == 400 and backwards.json()["error"]["param"] == "start"
    # start = end: a valid, empty range (the same instant written two ways), never a 400.
    same = api.get("/v1/usage", {"start": "2000-01-01", "end": "2000-01-01T00:00:00Z"})
    assert same.status_code == 200 and same.json()["total"]["requests"] == 0


@pytest.mark.parametrize(
    ("seconds", "moment"),
    [
        ("0", "1970-01-01T00:00:00Z"),
        ("-62135596800", FIRST),
        ("-62135596801", FIRST),  # clamped
        ("253402300799", "9999-12-31T23:59:59Z"),
        ("253402300800", LAST),  # clamped
        ("9" * 5000, LAST),  # longer than Python converts to an int
    ],
)
def test_usage_api_clamps_unix_seconds_to_datetimes_range(tenant, client_for, seconds, moment):
    params = {"end": seconds} if moment == LAST else {"start": seconds, "end": "99999999999999"}
    body = client_for(tenant, ["billing"]).get("/v1/usage", params).json()
    assert body["end" if moment == LAST else "start"] == moment


@pytest.mark.parametrize(
    ("given", "utc"),
    [
        ("2025-11-28T10:00:00Z", "2025-11-28T10:00:00Z"),
        ("2025-11-28t10:00:00z", "2025-11-28T10:00:00Z"),  # RFC 3339 allows lower case
        ("2025-11-28 10:00:00Z", "2025-11-28T10:00:00Z"),
        ("2025-11-28T10:00:00+05:30", "2025-11-28T04:30:00Z"),
        ("2025-11-28T10:00:00-00:00", "2025-11-28T10:00:00Z"),
        ("2025-11-28T10:00:00.5-02:00", "2025-11-28T12:00:00.500000Z"),
        ("2025-11-28T10:00:00.123456789Z", "2025-11-28T10:00:00.123456Z"),
        ("2025-11-28T10:00:00", "2025-11-28T10:00:00Z"),  # no offset: UTC
        ("2025-11-28", "2025-11-28T00:00:00Z"),
        ("0001-01-01T00:00:00+23:59", FIRST),
        ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),  # a leap second: POSIX's next one
    ],
)
def test_usage_api_accepts_rfc_3339_dates_and_times(tenant, client_for, given, utc):
    response = client_for(tenant, ["billing"]).get("/v1/usage", {"start": given})
    assert response.status_code == 200, response.content
    assert response.json()["start"] == utc


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "0000-12-31T00:00:00Z"}, "start"),  # no year 0 in Python's calendar
        ({"end": "2025-11-28T10:00:00+24:00"}, "end"),
        ({"start": "1e9"}, "start"),
        ({"end": "1.5"}, "end"),
        ({"start": "--1"}, "start"),
        ({"end": "10:00:00"}, "end"),
        ({"start": "2025-11-28T10:00:00Zjunk"}, "start"),
        # ISO 8601 forms that are not RFC 3339's (Python's parser took them).
        ({"start": "2026-W48"}, "start"),
        ({"start": "2026-11-28T10"}, "start"),
        ({"start": "2026-11-28T10:00:00+0100"}, "start"),
        ({"start": "2026-11-28T10:00:00,5Z"}, "start"),
        ({"end": "2026-11-28T10:00Z"}, "end"),
    ],
)
def test_usage_api_rejects_what_is_not_a_moment(tenant, client_for, params, param):
    response = client_for(tenant, ["billing"]).get("/v1/usage", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request",
        "invalid_parameter",
        param,
    )
    assert "RFC 3339" in error["message"]


@pytest.mark.parametrize("offset", ["Z", "+01:00", "+14:00", "-01:00"])
def test_usage_api_clamps_the_leap_second_that_has_no_next_one(tenant, client_for, offset):
    """9999-12-31T23:59:60: the second after it is past datetime's range (it was a 500), in
    the client's offset too."""
    params = {"start": "2026-01-01", "end": f"9999-12-31T23:59:60{offset}"}
    response = client_for(tenant, ["billing"]).get("/v1/usage", params)
    assert response.status_code == 200, response.content
    assert response.json()["end"] <= LAST


def test_usage_api_takes_a_60th_second_only_as_a_leap_second(tenant, client_for):
    response = client_for(tenant, ["billing"]).get("/v1/usage", {"start": "2016-06-15T10:11:60Z"})
    assert response.status_code == 400

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

from tests.workers.helpers import make_request
from tests.workers.usage_queue import drain_usage_events
from workers.contract import ClassifyResult
from workers.usage import usage_event_build, usage_publish


def _result(request_id: str) -> ClassifyResult:
    return {
        "v": 1,
        "request_id": request_id,
        "model": "minilm-l6",
        "results": [],
        "usage": {"inputs": 3, "tokens": 42, "compute_ms": 12.5, "cached": 0},
    }


def test_event_is_keyed_by_the_request_id() -> None:
    request = make_request(["a", "b", "c"], labels=["x", "y"], livemode=True)
    event = usage_event_build(request=request, result=_result(request["request_id"]))
    assert event["event_id"] == request["request_id"]
    assert (event["tenant_id"], event["api_key_id"], event["livemode"]) == (
        "ten_test",
        "key_test",
        True,
    )
    assert (event["inputs"], event["tokens"], event["compute_ms"], event["cached"]) == (
        3,
        42,
        12.5,
        0,
    )
    assert event["kind"] == "inference" and event["worker"] == socket.gethostname()
    assert datetime.fromisoformat(event["occurred_at"]).utcoffset() == timedelta(0)


def test_published_event_lands_on_the_usage_stream_as_plain_json() -> None:
    drain_usage_events()
    request = make_request(["a"], labels=["x", "y"])
    event = usage_event_build(request=request, result=_result(request["request_id"]))
    usage_publish(event=event)
    assert drain_usage_events() == [event]


def test_events_carry_their_cost_to_serve() -> None:
    from decimal import Decimal

    from workers.usage import cost_micros

    # 12.5 ms of a $0.10/hour pool: 0.1 * 12.5 / 3,600,000 dollars = 0.3472 micro-dollars.
    assert cost_micros(12.5) == "0.3472"
    assert Decimal(cost_micros(3_600_000)) == Decimal("100000.0000")  # one hour = $0.10
    drain_usage_events()
    request = make_request(["a"], labels=["x", "y"])
    usage_publish(event=usage_event_build(request=request, result=_result(request["request_id"])))
    (event,) = drain_usage_events()
    assert event["cost_micros"] == cost_micros(event["compute_ms"]) and event["pool"] == "cpu"
    assert event["cost_currency"] == "usd"  # (the pool's WORKER_CURRENCY)


def test_an_event_is_dated_when_the_api_admitted_its_call() -> None:
    """A call admitted before its billing period ended and answered after it is billed in
    the period that reserved its inputs: the event carries the admission's time."""
    request = make_request(["a"], labels=["x", "y"], livemode=True)
    admitted = datetime(2026, 11, 30, 23, 59, 59, 900_000, tzinfo=UTC)
    request["admitted_at"] = admitted.timestamp()
    event = usage_event_build(request=request, result=_result(request["request_id"]))
    assert datetime.fromisoformat(event["occurred_at"]) == admitted

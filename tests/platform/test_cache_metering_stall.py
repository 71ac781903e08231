"""A cache-hit answer's usage event when Redis stalls (a chaos audit): the round trip that
meters it timed out in the API, which answered 503 at once, while Redis ran it once it
resumed, billing the 503. It is now tried again until it goes through (a second event under
the same id is one ledger row), and answered 200; a Redis that stays out of reach past the
request's hard stop is still a 503."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis

from core.errors import Overloaded
from inference import cache, dispatch
from metering.models import UsageRecord
from metering.services import usage_record_bulk
from workers.contract import GIVE_UP_GRACE_S, USAGE_STREAM

pytestmark = pytest.mark.django_db


class _RepliesLost:
    """A client whose pipelines run in Redis and whose replies are lost ``times`` times:
    a stall that ends after the API's socket timed out."""

    def __init__(self, real: redis.Redis, times: int) -> None:
        self.real, self.times = real, times

    def pipeline(self, **kwargs: Any) -> Any:
        pipe, owner = self.real.pipeline(**kwargs), self

        class Pipe:
            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

            def execute(self, **kw: Any) -> Any:
                results = pipe.execute(**kw)
                if owner.times > 0:
                    owner.times -= 1
                    raise redis.TimeoutError("Timeout reading from socket")
                return results

        return Pipe()


def _request(tenant, deadline: float) -> Any:
    return {
        "v": 1, "request_id": f"req_{uuid.uuid4().hex[:24]}", "tenant_id": tenant.pk,
        "api_key_id": "key_a", "livemode": True, "model": "minilm-l6", "inputs": ["hello"],
        "deadline": deadline, "admitted_at": time.time(),
    }  # fmt: skip


def _events(request_id: str) -> list[dict[str, Any]]:
    client = dispatch.redis_client()
    found = [json.loads(fields[b"event"]) for _, fields in client.xrange(USAGE_STREAM)]
    return [event for event in found if event["event_id"] == request_id]


def test_a_cached_answer_whose_metering_reply_was_lost_is_answered_and_billed_once(
    tenant, monkeypatch
):
    monkeypatch.setattr(cache, "redis_client", lambda: _RepliesLost(dispatch.redis_client(), 1))
    request = _request(tenant, time.time() + 30)
    row = {"index": 0, "label": "a", "score": 0.9, "scores": {"a": 0.9, "b": 0.1}, "tokens": 3}
    answer = cache.cached_answer(request, [row])
    assert answer["usage"] == {"inputs": 1, "tokens": 3, "compute_ms": 0.0, "cached": 1}
    events = _events(request["request_id"])
    assert len(events) == 2  # the lost round trip's, and the retry's
    usage_record_bulk(events=events)
    assert (
        UsageRecord.objects.for_tenant(tenant).filter(event_id=request["request_id"]).count() == 1
    )


def test_a_redis_out_of_reach_past_the_hard_stop_is_a_503(tenant, monkeypatch):
    class Down:
        def pipeline(self, **kwargs: Any) -> Any:
            return self

        def xadd(self, *args: Any) -> None:
            pass

        def execute(self, **kwargs: Any) -> Any:
            raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(cache, "redis_client", lambda: Down())
    monkeypatch.setattr(cache, "give_up_client", lambda: Down())
    # Its hard stop a second away: a few tries, then the 503.
    deadline = time.time() - GIVE_UP_GRACE_S - dispatch.GIVE_UP_SKEW_S + 1
    row = {"index": 0, "label": "a", "score": 0.9, "scores": {"a": 0.9, "b": 0.1}, "tokens": 3}
    began = time.monotonic()
    with pytest.raises(Overloaded) as raised:
        cache.cached_answer(_request(tenant, deadline), [row])
    assert raised.value.code == "broker_unavailable" and time.monotonic() - began < 5

"""The operators' Workers page and the data plane's gauges on /metrics: a real inference
worker process reports itself (pool, hardware price, models, texts embedded, how busy) and
the page shows it live, with the queues; a worker that stops says so, one that goes quiet
(killed, cut off) is shown silent. Only staff allowed to view workers see the page."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from ops.workers import WorkerRow, fleet_cost, workers_seen
from tests.factories import staff_client
from workers.presence import SEEN_KEY, Presence, busy_with, describe, report_key
from workers.runtime.precision import resolve_device
from workers.settings import settings_from_env

PAGE = "/admin/ops/worker/"


@pytest.fixture
def client_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client
    client.close()


def _wait_for(predicate: Callable[[], WorkerRow | None], seconds: float = 10) -> WorkerRow:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = predicate()
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"not seen in {seconds} s: {workers_seen()}")


def _row(name: str, state: str = "live", texts_over: int = -1) -> Callable[[], WorkerRow | None]:
    def find() -> WorkerRow | None:
        for row in workers_seen():
            if row.name == name and row.state == state and row.texts > texts_over:
                return row
        return None

    return find


def test_a_live_worker_is_on_the_page_with_its_price_models_and_work(
    http: Any, secret: str, inference_worker: str
) -> None:
    before = _wait_for(_row(inference_worker))
    assert (before.kind, before.pool, before.currency) == ("inference", "cpu", "usd")
    assert str(before.price_per_hour) == settings_from_env().price_per_hour
    device = resolve_device(settings_from_env().device).type  # the worker's, on a GPU too
    assert any(model.startswith(f"minilm-l6 on {device}") for model in before.models)
    assert any(model.startswith(f"minilm-l6-int8 on {device}") for model in before.models)
    assert not before.contract_differs

    body = {"model": "minilm-l6", "inputs": ["a new text for the page", "and another one"],
            "labels": ["good", "bad"]}  # fmt: skip
    assert http(secret).post("/v1/classify", json=body).status_code == 200
    # (Both texts: a report may come between two forward passes of one request.)
    after = _wait_for(_row(inference_worker, texts_over=before.texts + 1))
    assert after.texts >= before.texts + 2 and after.forwards > before.forwards

    page = staff_client(superuser=True).get(PAGE)
    assert page.status_code == 200
    assert _cells(page.content.decode(), inference_worker)[:6] == [
        inference_worker,
        "inference",
        "live",
        "0 s ago",
        "cpu",
        f"{before.price_per_hour} usd",
    ]
    # A pool priced in another currency than the margins count cost in is flagged there.
    with override_settings(COST_CURRENCY="eur"):
        flagged = staff_client(superuser=True).get(PAGE).content.decode()
    assert "not in margins" in _cells(flagged, inference_worker)[5]

    metrics = http(secret).get("/metrics").text
    live = [line for line in metrics.splitlines() if line.startswith("workers_live{")]
    assert len(live) == len(set(line.split(" ")[0] for line in live))  # one series each
    assert any(line.startswith('workers_live{kind="inference",pool="cpu"}') for line in live)
    assert 'queue_entries{queue="usage dead letters"}' in metrics
    assert 'workers_price_per_hour{currency="usd",kind="inference",pool="cpu"}' in metrics


def _cells(page: str, name: str) -> list[str]:
    """The text of each cell of the Workers table's row for ``name``."""
    row = re.search(rf"<tr><td>{re.escape(name)}.*?</tr>", page, re.S)
    assert row is not None, f"no row for {name}"
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def test_only_staff_allowed_to_view_workers_see_the_page(transactional_db: Any) -> None:
    assert staff_client("tenants.view_tenant").get(PAGE).status_code == 403
    assert staff_client("ops.view_worker").get(PAGE).status_code == 200


COUNTERS = ("texts", "forwards", "busy_ms", "real_tokens", "padded_tokens")


def _counters(**values: float) -> dict[str, float]:
    return {name: values.get(name, 0.0) for name in COUNTERS}


def test_throughput_and_busyness_are_those_since_the_previous_report(monkeypatch):
    """A batcher counts a forward's time over its model threads, so busy_ms is already the
    share of the worker's model capacity: 150 ms of it in 2 s is 7.5 % busy."""
    counters = _counters()
    settings = settings_from_env({})
    static = describe(name="w@test", queues=["inference"], settings=settings, started_at=0.0)
    presence = Presence(redis.Redis(), static, lambda: (dict(counters), {}), interval=5)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("workers.presence.time.monotonic", lambda: next(clock))
    first = presence.report(state="live", now=1.0)
    assert first["recent"] == {"texts_per_s": None, "busy_pct": None}
    counters.update(texts=64, busy_ms=150)
    assert presence.report(state="live", now=3.0)["recent"] == {
        "texts_per_s": 32.0,
        "busy_pct": 7.5,
    }


def test_busy_is_the_busiest_base_models_not_their_sum(monkeypatch):
    """Two base models, each with its own batcher and threads, both busy all the time: 100 %,
    not 200 % (the review's reproduction read 190 %)."""
    counters = {**_counters(), "busy_ms:minilm-l6": 0.0, "busy_ms:minilm-l6-int8": 0.0}
    static = describe(name="w@test", queues=["inference"], settings=settings_from_env({}),
                      started_at=0.0)  # fmt: skip
    presence = Presence(redis.Redis(), static, lambda: (dict(counters), {}), interval=5)
    clock = iter([100.0, 101.0])
    monkeypatch.setattr("workers.presence.time.monotonic", lambda: next(clock))
    presence.report(state="live", now=1.0)
    counters.update({"busy_ms": 2000.0, "busy_ms:minilm-l6": 1000.0,
                     "busy_ms:minilm-l6-int8": 1000.0})  # fmt: skip
    assert presence.report(state="live", now=2.0)["recent"]["busy_pct"] == 100.0


def test_a_worker_that_stops_says_so_and_one_that_goes_quiet_is_silent(
    transactional_db: Any, client_redis: redis.Redis
) -> None:
    settings = settings_from_env({"WORKER_POOL": "gpu-h100", "WORKER_PRICE_PER_HOUR": "2.5"})
    counters = _counters()

    def stats() -> tuple[dict[str, float], dict[str, Any]]:
        return dict(counters), {"models": ["minilm-l6 on cuda in bfloat16"], "fine_tuned_loaded": 3}

    names = ("gpu-a@test", "gpu-b@test")
    presences = {
        name: Presence(client_redis, describe(name=name, queues=["inference"],
                       settings=settings, started_at=time.time()), stats, interval=0.2)
        for name in names
    }  # fmt: skip
    try:
        presences["gpu-a@test"].start()
        _wait_for(_row("gpu-a@test"))
        with busy_with("fine-tuning ftjob_x"):
            counters.update(texts=64, forwards=4, busy_ms=150, real_tokens=900, padded_tokens=1000)
            busy = _wait_for(_row("gpu-a@test", texts_over=0))
        assert busy.activity == "fine-tuning ftjob_x" and busy.fine_tuned_loaded == 3
        assert busy.texts_per_forward == 16 and busy.padding_pct == pytest.approx(10)
        assert busy.busy_pct is not None and busy.texts_per_s is not None

        presences["gpu-a@test"].stop()
        stopped = _wait_for(_row("gpu-a@test", state="stopped"))
        assert stopped.silent_for_s < 1
        # As a worker killed with kill -9: one report, then nothing, no goodbye.
        presences["gpu-b@test"].beat(state="live")
        _wait_for(_row("gpu-b@test", state="silent"), seconds=3)

        page = staff_client(superuser=True).get(PAGE).content.decode()
        cells = _cells(page, "gpu-a@test")
        assert cells[1:3] == ["inference", "stopped"] and cells[4] == "gpu-h100"
        assert _cells(page, "gpu-b@test")[1:3] == ["inference", "silent"]
        assert "gpu-h100" not in {row.pool for row in fleet_cost(workers_seen())}
    finally:
        for presence in presences.values():
            presence._stop.set()
        client_redis.zrem(SEEN_KEY, *names)
        client_redis.delete(*(report_key(name) for name in names))


def test_a_worker_has_no_other_admin_page(transactional_db: Any) -> None:
    """Django's change, delete and history pages would look for a row in a table that does
    not exist: they are not there (404), not 500s."""
    operator = staff_client(superuser=True)
    for path in ("x/", "x/change/", "x/delete/", "x/history/", "add/"):
        assert operator.get(PAGE + path).status_code == 404


def test_the_page_says_when_redis_cannot_be_reached(
    transactional_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr("ops.workers.redis_client", lambda: down)
    page = staff_client(superuser=True).get(PAGE)
    assert page.status_code == 200
    assert "Redis cannot be reached" in page.content.decode()


def test_an_absurd_price_in_a_report_is_no_price_not_a_500(
    transactional_db: Any, client_redis: redis.Redis
) -> None:
    """1E+999999999 an hour (a worker's word, checked only as finite there) made the page
    and /metrics a 500 (decimal overflow adding the fleet's prices). The worker now refuses
    such a price at start, and the page counts it as none."""
    from django.test import Client

    with pytest.raises(ValueError, match="WORKER_PRICE_PER_HOUR"):
        settings_from_env({"WORKER_PRICE_PER_HOUR": "1E+999999999"})
    report = describe(name="odd@test", queues=["inference"], settings=settings_from_env({}),
                      started_at=time.time())  # fmt: skip
    report = {**report, "state": "live", "price_per_hour": "1E+999999999"}
    client_redis.set(report_key("odd@test"), json.dumps(report), ex=60)
    client_redis.zadd(SEEN_KEY, {"odd@test": time.time()})
    try:
        page = staff_client(superuser=True).get(PAGE)
        assert page.status_code == 200
        assert Client().get("/metrics").status_code == 200
        row = next(row for row in workers_seen() if row.name == "odd@test")
        assert row.price_per_hour is None
    finally:
        client_redis.delete(report_key("odd@test"))
        client_redis.zrem(SEEN_KEY, "odd@test")

"""The operators' Workers page and the data plane's gauges on /metrics: a real inference
worker process reports itself (pool, hardware price, models, texts embedded, how busy) and
the page shows it live, with the queues; a worker that stops says so, one that goes quiet
(killed, cut off) is shown silent. Only staff allowed to view workers see the page."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from ops.workers import WorkerRow, fleet_cost, workers_seen
from tests.factories import staff_client
from workers.presence import SEEN_KEY, Presence, busy_with, describe, report_key
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
    assert any(model.startswith("minilm-l6 on cpu") for model in before.models)
    assert any(model.startswith("minilm-l6-int8 on cpu") for model in before.models)
    assert not before.contract_differs

    body = {"model": "minilm-l6", "inputs": ["a new text for the page", "and another one"],
            "labels": ["good", "bad"]}  # fmt: skip
    assert http(secret).post("/v1/classify", json=body).status_code == 200
    after = _wait_for(_row(inference_worker, texts_over=before.texts))
    assert after.texts >= before.texts + 2 and after.forwards > before.forwards

    page = staff_client(superuser=True).get(PAGE)
    assert page.status_code == 200
    text = page.content.decode()
    for shown in (inference_worker, "live", "inference", "usage dead letters", "Fleet cost"):
        assert shown in text
    assert f"{before.price_per_hour} usd" in text

    metrics = http(secret).get("/metrics").text
    assert 'workers_live{kind="inference",pool="cpu"}' in metrics
    assert 'queue_entries{queue="usage dead letters"}' in metrics
    assert 'workers_price_per_hour{currency="usd",kind="inference",pool="cpu"}' in metrics


def test_only_staff_allowed_to_view_workers_see_the_page(transactional_db: Any) -> None:
    assert staff_client("tenants.view_tenant").get(PAGE).status_code == 403
    assert staff_client("ops.view_worker").get(PAGE).status_code == 200


def test_a_worker_that_stops_says_so_and_one_that_goes_quiet_is_silent(
    transactional_db: Any, client_redis: redis.Redis
) -> None:
    settings = settings_from_env({"WORKER_POOL": "gpu-h100", "WORKER_PRICE_PER_HOUR": "2.5"})
    counters = {"texts": 0.0, "forwards": 0.0, "busy_ms": 0.0, "real_tokens": 0.0,
                "padded_tokens": 0.0}  # fmt: skip

    def stats() -> tuple[dict[str, float], dict[str, Any]]:
        return dict(counters), {"models": ["minilm-l6 on cuda in bfloat16"], "fine_tuned_loaded": 3}

    presences = {}
    for name in ("gpu-a@test", "gpu-b@test"):
        static = describe(
            name=name, queues=["inference"], settings=settings, started_at=time.time()
        )
        presences[name] = Presence(client_redis, static, stats, interval=0.2)
        presences[name].start()
    try:
        _wait_for(_row("gpu-a@test"))
        with busy_with("fine-tuning ftjob_x"):
            counters.update(texts=64, forwards=4, busy_ms=150, real_tokens=900, padded_tokens=1000)
            busy = _wait_for(_row("gpu-b@test", texts_over=0))
        assert busy.activity == "fine-tuning ftjob_x" and busy.fine_tuned_loaded == 3
        assert busy.texts_per_forward == 16 and busy.padding_pct == pytest.approx(10)

        presences["gpu-a@test"].stop()
        stopped = _wait_for(_row("gpu-a@test", state="stopped"))
        assert stopped.silent_for_s < 1
        # As a worker killed with kill -9 does: no more reports, no goodbye.
        presences["gpu-b@test"]._stop.set()
        presences["gpu-b@test"]._thread.join()
        _wait_for(_row("gpu-b@test", state="silent"), seconds=3)

        page = staff_client(superuser=True).get(PAGE).content.decode()
        assert "gpu-a@test" in page and "stopped" in page and "silent" in page
        assert "gpu-h100" not in {row.pool for row in fleet_cost(workers_seen())}
    finally:
        for presence in presences.values():
            presence._stop.set()
        client_redis.zrem(SEEN_KEY, *presences)
        client_redis.delete(*(report_key(name) for name in presences))


def test_the_page_says_when_redis_cannot_be_reached(
    transactional_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr("ops.workers.redis_client", lambda: down)
    page = staff_client(superuser=True).get(PAGE)
    assert page.status_code == 200
    assert "Redis cannot be reached" in page.content.decode()

"""A Redis that takes connections and never answers (a stall) costs /readyz and /metrics
about a second, not the API's own timeouts: /readyz took 15 s (past its probe's 10 s) and
/metrics 10 s (Prometheus's default scrape timeout, so every API series went missing while
Redis was down; an operator's audit)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from rest_framework.test import APIClient

from ops import views

pytestmark = pytest.mark.django_db


@pytest.fixture
def stalled_redis(settings):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])  # taken, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    views.probe_client.cache_clear()
    yield
    listener.close()
    for conn in held:
        conn.close()
    views.probe_client.cache_clear()


def test_readyz_and_metrics_answer_soon_when_redis_stalls(stalled_redis):
    client = APIClient()
    began = time.monotonic()
    ready = client.get("/readyz")
    assert time.monotonic() - began < 5  # one probe timeout a check, not 5-10 s each
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"] == {"ok": False, "error": "TimeoutError"}
    assert ready.json()["checks"]["database"]["ok"]

    began = time.monotonic()
    scraped = client.get("/metrics")
    assert time.monotonic() - began < 5
    assert scraped.status_code == 200 and b"usage_events_total" in scraped.content
    assert b"inference_queue_messages" not in scraped.content  # no sample, not a failed scrape

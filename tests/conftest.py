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
    marker = request.node.get_closest_marker("django_db")
    marked = marker is not None and bool(marker.kwargs.get("transaction"))
    if marked or {"transactional_db", "live_server"} & set(request.fixturenames):
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
    # Presence reports every 0.5 s, so that the Workers page's test sees its counters move.
    worker = WorkerProcess(
        "inference", ["-P", "threads", "-c", "16"], {"WORKER_PRESENCE_INTERVAL_S": "0.5"}
    )
    worker.start()
    try:
        yield worker.name
    finally:
        worker.stop()


@pytest.fixture(scope="session", autouse=True)
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact store per run, shared by the API (settings) and every worker process
    (environment, inherited when they start)."""
    path = tmp_path_factory.mktemp("artifacts")
    os.environ["ARTIFACT_DIR"] = str(path)
    from django.conf import settings

    settings.ARTIFACT_DIR = path
    return path


class WorkerProcess:
    """A real ``celery -A workers.celery_app worker`` process on one queue, as deployed;
    ``kill()`` is kill -9, ``start()`` brings up a fresh one."""

    def __init__(self, queue: str, pool: list[str], env: dict[str, str] | None = None) -> None:
        self.queue, self.pool, self.env = queue, pool, env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.name = ""
        self.log = Path(tempfile.mkdtemp(prefix=f"{queue}-worker-")) / "worker.log"

    def start(self) -> None:
        self.name = f"test-{self.queue}-{uuid.uuid4().hex[:8]}@localhost"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        command = [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", self.queue, *self.pool, "-n", self.name,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        _wait_for_worker(self.name, self.process, self.log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class TrainingWorker(WorkerProcess):
    """The training worker: solo pool, one job at a time, as deployed."""

    # Heartbeats every 0.3 s so that tests can use a lease of a few seconds.
    ENV = {"TRAINING_HEARTBEAT_S": "0.3", "WORKER_TORCH_THREADS": "2"}

    def __init__(self) -> None:
        super().__init__("training", ["-P", "solo"], self.ENV)


@pytest.fixture(scope="session")
def training_worker() -> Iterator[TrainingWorker]:
    """A real Celery training worker process on the test Redis, for the whole session."""
    worker = TrainingWorker()
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()

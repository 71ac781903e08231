"""Liveness of the processes that serve no HTTP (``workers/liveness.py``): the manifests and
the compose file probe the heartbeat file each one writes, and the real consumers and
platform worker (``manage.py consume_usage``, ``consume_training_events``,
``platform_worker``) keep their files fresh while idle, and let them go stale when wedged.
(The workers' own: tests/workers/test_liveness.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from deploy.embedded_redis import start_embedded_redis, stop_embedded_redis
from tests.deploy.test_manifests import _compose, _deployment
from tests.workers.test_liveness import age, probe

ROOT = Path(__file__).resolve().parents[2]
PROBED = {"margin-inference-worker": "120", "margin-training-worker": "120",
          "margin-usage-consumer": "900", "margin-training-events": "900",
          "margin-platform-worker": "120"}  # fmt: skip


def _probe_argv(file: str, max_age: str) -> list[str]:
    return ["python", "-m", "workers.liveness", file, max_age]


@pytest.mark.parametrize("name", sorted(PROBED))
def test_each_deployment_probes_the_heartbeat_file_its_process_writes(name: str):
    container = _deployment(name)["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    argv = _probe_argv(env["LIVENESS_FILE"], PROBED[name])
    assert container["livenessProbe"]["exec"]["command"] == argv
    # Restarted only after the threshold and a second failed look, not on one slow probe.
    assert container["livenessProbe"]["failureThreshold"] >= 2
    if "startupProbe" in container:  # the workers: loading the models comes first
        assert container["startupProbe"]["exec"]["command"] == argv
        probe = container["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 300


def test_compose_checks_the_same_files():
    services = _compose()["services"]
    for name, service in services.items():
        wanted = PROBED.get(f"margin-{name}")
        if wanted is None:
            assert "healthcheck" not in service or name in ("postgres", "redis"), name
            continue
        file = service["environment"]["LIVENESS_FILE"]
        assert service["healthcheck"]["test"] == ["CMD", *_probe_argv(file, wanted)], name


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    host = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    return f"postgres://{s['USER']}{password}@{host}/{s['NAME']}"


@pytest.fixture(
    params=[["consume_usage", "--name", "liveness"], ["consume_training_events"],
            ["platform_worker", "--no-beat"]],
    ids=["usage", "training-events", "platform-worker"],
)  # fmt: skip
def consumer(
    request: Any, tmp_path: Path, transactional_db: Any
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Each consumer as deployed (and the platform worker, billing's Celery worker), on a
    Redis of its own (idle for sure) and the test database, beating every 0.3 s."""
    (tmp_path / "redis").mkdir()
    server, url = start_embedded_redis(str(tmp_path / "redis"))
    path = tmp_path / "alive"
    env = {**os.environ, "REDIS_URL": url, "DATABASE_URL": _database_url(),
           "DJANGO_SETTINGS_MODULE": "config.settings.base", "LIVENESS_FILE": str(path),
           "LIVENESS_INTERVAL_S": "0.3"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *request.param],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        yield process, path
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            process.wait(timeout=30)
        stop_embedded_redis(server)


def test_an_idle_consumer_beats_and_a_stopped_one_goes_stale(consumer):
    process, path = consumer
    oldest, end = 0.0, time.monotonic() + 3
    while time.monotonic() < end:
        oldest = max(oldest, age(path))
        time.sleep(0.05)
    assert oldest < 1.5, f"an idle consumer's file got {oldest:.1f} s old"
    assert probe(path).returncode == 0
    os.kill(process.pid, signal.SIGSTOP)  # alive, consuming nothing
    time.sleep(2.5)
    assert probe(path).returncode == 1
    os.kill(process.pid, signal.SIGCONT)
    time.sleep(1.0)
    assert probe(path).returncode == 0

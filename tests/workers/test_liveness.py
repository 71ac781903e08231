"""The workers' liveness heartbeat (``workers/liveness.py``) on real worker processes: an
idle worker's file stays fresh (the beat comes from its consumer's event loop, not from
work arriving), a stopped one's goes stale and its probe fails, and a training job, which
holds the solo pool's loop for its whole run, beats from its steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import WorkerProcess
from tests.workers.training.conftest import dataset_bytes, make_request
from workers.artifacts import ArtifactStore
from workers.contract import TaskName
from workers.presence import report_key

INTERVAL_S = 0.3
MAX_AGE_S = 2.0  # the probe's threshold in these tests: several beats
# A training job beats at each step (an embedding batch, a LoRA optimiser step): measured on
# the 2-core machine beside other tests, up to 8.2 s apart (the int8 variant's quantisation),
# and 4-6.6 s for a LoRA step of 16 examples on 2 threads.
TRAINING_MAX_AGE_S = 15.0


def probe(path: Path, max_age_s: float = MAX_AGE_S) -> subprocess.CompletedProcess[str]:
    """The probe exactly as the manifests run it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "workers.liveness", str(path), str(max_age_s)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def age(path: Path) -> float:
    return time.time() - path.stat().st_mtime


def test_the_probe_passes_a_fresh_file_and_fails_a_stale_or_missing_one(tmp_path: Path):
    path = tmp_path / "alive"
    missing = probe(path)
    assert missing.returncode == 1 and "no heartbeat yet" in missing.stderr
    path.touch()
    assert probe(path).returncode == 0
    os.utime(path, (time.time() - 10, time.time() - 10))
    stale = probe(path)
    assert stale.returncode == 1 and "10 s ago" in stale.stderr


def _worker(queue: str, pool: list[str], path: Path) -> WorkerProcess:
    env = {"LIVENESS_FILE": str(path), "LIVENESS_INTERVAL_S": str(INTERVAL_S),
           "WORKER_PRESENCE_INTERVAL_S": "0.2", "WORKER_TORCH_THREADS": "2"}  # fmt: skip
    return WorkerProcess(queue, pool, env)


@pytest.fixture
def inference(tmp_path: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    # A queue of its own: idle for sure, whatever else the session runs.
    worker = _worker(f"liveness-{uuid.uuid4().hex[:6]}", ["-P", "threads", "-c", "4"],
                     tmp_path / "alive")  # fmt: skip
    worker.start()
    try:
        yield worker, tmp_path / "alive"
    finally:
        if worker.process is not None and worker.process.poll() is None:
            os.kill(worker.process.pid, signal.SIGCONT)
        worker.stop()


def _fresh_for(path: Path, seconds: float) -> tuple[float, int]:
    """(the oldest the file got, how many times it was touched) over ``seconds``."""
    oldest, stamps, end = 0.0, set(), time.monotonic() + seconds
    while time.monotonic() < end:
        oldest = max(oldest, age(path))
        stamps.add(path.stat().st_mtime)
        time.sleep(0.05)
    return oldest, len(stamps)


def test_an_idle_worker_beats_and_a_stopped_one_goes_stale(inference):
    """Nothing arrives on its queue: the beat comes from the loop that would take it."""
    worker, path = inference
    oldest, touched = _fresh_for(path, 3.0)
    assert oldest < 1.5 and touched >= 4, (oldest, touched)
    assert probe(path).returncode == 0
    # Wedged: alive (its pid is there), doing nothing.
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGSTOP)
    time.sleep(MAX_AGE_S + 0.5)
    assert probe(path).returncode == 1
    os.kill(worker.process.pid, signal.SIGCONT)
    time.sleep(1.0)
    assert probe(path).returncode == 0


def test_a_training_job_that_holds_the_workers_loop_beats_from_its_steps(tmp_path: Path):
    """The solo pool runs the job on the consumer's loop, whose timer then stops: without the
    steps' beats the file aged with the job (minutes for a real one), and the probe would
    restart a worker that was training."""
    path = tmp_path / "alive"
    queue = f"liveness-training-{uuid.uuid4().hex[:6]}"
    worker = _worker(queue, ["-P", "solo"], path)
    worker.start()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        assert _fresh_for(path, 1.0)[0] < 1.5  # idle
        digest = ArtifactStore().put(dataset_bytes("support_tickets.jsonl", 160))
        # A job must outlast the threshold to prove anything: 10 epochs did on the 2-core
        # CPU, and took 6.0 s on an H200 (160 took 13.7 s there), so a faster machine runs
        # a longer one.
        for epochs in (10, 40, 400):
            took, oldest = _train(client, worker, queue, digest, path, epochs)
            if took > TRAINING_MAX_AGE_S + 1:
                break
        assert took > TRAINING_MAX_AGE_S + 1, f"a job of {took:.1f} s proves nothing"
        assert oldest < TRAINING_MAX_AGE_S, f"{oldest:.1f} s old during a {took:.1f} s job"
        assert probe(path).returncode == 0
        print(f"job {took:.1f} s ({epochs} epochs), the file at most {oldest:.1f} s old")
    finally:
        worker.stop()
        client.close()


def _train(
    client: redis.Redis, worker: WorkerProcess, queue: str, digest: str, path: Path, epochs: int
) -> tuple[float, float]:
    """(how long a LoRA job of ``epochs`` ran on ``worker``, the heartbeat file's greatest
    age meanwhile)."""
    from workers.celery_app import app

    job = f"ftjob_live{uuid.uuid4().hex[:8]}"
    request = make_request(digest, method="lora", job_id=job,
                           hyperparameters={"epochs": epochs})  # fmt: skip
    app.send_task(TaskName.TRAIN.value, args=[request], queue=queue)

    def activity() -> str | None:
        report = client.get(report_key(worker.name))
        return json.loads(report)["activity"] if report else None

    deadline, oldest, began, ended = time.monotonic() + 300, 0.0, None, None
    while time.monotonic() < deadline:
        running = activity() == f"fine-tuning {job}"
        if running:
            began = began or time.monotonic()
            oldest = max(oldest, age(path))
        elif began is not None:
            ended = time.monotonic()
            break
        time.sleep(0.05)
    assert began is not None and ended is not None, "the job never ran, or never ended"
    return ended - began, oldest

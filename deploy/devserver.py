"""``make run``: the whole product in the foreground on one machine.

Starts the API server (granian, port $PORT, default 8000), one inference worker, the
usage consumer and the platform worker (billing tasks and their schedule), on the database
and Redis named by DATABASE_URL / REDIS_URL, or on SQLite and an embedded Redis when they
are unset. Ctrl-C or SIGTERM stops every child; if any
child dies, the rest are stopped too and the exit status says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
# How long children get to stop after SIGTERM before SIGKILL: longer than the API waits for
# a worker (INFERENCE_TIMEOUT_S), so a request in flight when the inference worker died
# still gets its 503 rather than a dropped connection (15 s dropped them, at 30 s).
GRACE_S = float(os.environ.get("INFERENCE_TIMEOUT_S", "30")) + 10


def _worker(queue: str, pool: list[str]) -> list[str]:
    """A data-plane Celery worker on one queue."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
        *pool, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel", os.environ.get("LOG_LEVEL", "INFO"),
    ]  # fmt: skip


def _children(port: str) -> dict[str, list[str]]:
    python = sys.executable
    bin_dir = Path(python).parent
    return {
        "api": [
            str(bin_dir / "granian"),
            "--interface",
            "wsgi",
            "--working-dir",
            str(ROOT / "platform"),
            "--host",
            "0.0.0.0",  # noqa: S104 - the API serves other hosts, as before (gunicorn --bind)
            "--port",
            port,
            # NOTE: granian, not gunicorn: HTTP parsing and connections in Rust, the WSGI app
            # on a pool of blocking threads (a request mostly waits on the worker, and a
            # waiting request needs only a thread). Measured on this 2-core machine, 32
            # one-input clients, alternating runs against gunicorn's gthread worker (2 x
            # 16): API CPU per request 3.3-3.5 ms against 4.2-4.5 (cache hits, 411-438
            # against 324-346 requests/s) and 3.8-4.4 ms against 5.0-5.7 (model path).
            # One process per core: fewer threads contend for each GIL than in one big
            # process, while each process's classifications in flight together still travel
            # to the workers as one message (inference/dispatch.py).
            "--workers",
            os.environ.get("API_PROCESSES", str(max(2, os.cpu_count() or 1))),
            "--blocking-threads",
            os.environ.get("API_THREADS", "16"),
            "--runtime-threads",
            "1",
            # NOTE: granian's "auto" takes the multi-threaded Rust runtime for WSGI even on one
            # runtime thread. The single-threaded one, measured here in alternating runs, 32
            # one-input clients: API CPU 1.69-1.73 ms a request against 2.03-2.08 and
            # 146.7-149.7 inputs/s against 132.6-136.1 (model path); cache hits +6 %, +26 %
            # and -3 % in three pairs. HTTP/2 stays on (auto); HTTP/1 only gained nothing.
            "--runtime-mode",
            "st",
            "--respawn-failed-workers",
            "--log-level",
            os.environ.get("LOG_LEVEL", "INFO").lower(),
            "config.wsgi:application",
        ],
        "inference-worker": _worker(
            "inference", ["-P", "threads", "-c", os.environ.get("WORKER_CONCURRENCY", "64")]
        ),
        "usage-consumer": [python, str(ROOT / "manage.py"), "consume_usage"],
        # Fine-tuning: a separate worker on the training queue, one job at a time (solo), so a
        # job never holds an inference slot or queues classifications behind it; and the
        # consumer that applies its job events (and retries or fails silent jobs).
        "training-worker": _worker("training", ["-P", "solo"]),
        "training-events": [python, str(ROOT / "manage.py"), "consume_training_events"],
        # Billing's Celery tasks (Stripe webhooks, usage pushes) and the beat schedule.
        "platform-worker": [python, str(ROOT / "manage.py"), "platform_worker"],
    }


def _metrics_dir() -> Path:
    """The API processes' metrics directory: under DATA_DIR, with the install's other files,
    so that two installs of one checkout (each its own DATA_DIR) neither add up nor empty
    each other's /metrics, as one ``var/prometheus`` in the checkout did."""
    # Same default as the settings' DATA_DIR; a relative one is read from the checkout, where
    # the children run.
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / "var"))
    return ROOT / data_dir / "prometheus"


def main() -> int:
    embedded = None
    if not os.environ.get("REDIS_URL"):
        from deploy.embedded_redis import start_embedded_redis

        directory = ROOT / "var" / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        embedded, url = start_embedded_redis(str(directory))
        os.environ["REDIS_URL"] = url
        print(f"devserver: embedded Redis at {url}", flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several API processes: /metrics adds up what each one wrote here. Emptied at start:
        # the last run's files would be added up too.
        metrics_dir = _metrics_dir()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    port = os.environ.get("PORT", "8000")

    processes: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    for name, command in _children(port).items():
        # Each child leads its own process group, so that a child that will not stop is
        # killed with every process it started (the API server's worker processes).
        processes[name] = subprocess.Popen(command, cwd=ROOT, start_new_session=True)  # noqa: S603 - our own argv
        print(f"devserver: started {name} (pid {processes[name].pid})", flush=True)
    print(f"devserver: API on http://127.0.0.1:{port}  (docs: /v1/docs)", flush=True)

    status = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"devserver: {name} exited with {process.returncode}; stopping", flush=True)
                status = 1
                stopping = True
                break
        time.sleep(0.5)

    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if embedded is not None:
        from deploy.embedded_redis import stop_embedded_redis

        stop_embedded_redis(embedded)
    print("devserver: stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

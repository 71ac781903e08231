"""``make run``: the whole product in the foreground on one machine.

Starts the API server (granian, port $PORT, default 8000), one inference worker, the
usage consumer and the platform worker (billing tasks and their schedule), on the database
and Redis named by DATABASE_URL / REDIS_URL, or on SQLite and an embedded Redis when they
are unset. Ctrl-C or SIGTERM stops every child; if any
child dies, the rest are stopped too and the exit status says so.

Children stop in an order that bills every call answered: the API first (its requests in
flight still reach the workers), then the workers, then the consumers once they have stored
what the others left in Redis (for up to ``DRAIN_S``), and the embedded Redis last.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.embedded_redis import (
    embedded_redis_alive,
    start_embedded_redis,
    stop_embedded_redis,
)
from workers.contract import USAGE_GROUP, USAGE_STREAM, Queue
from workers.settings import int_setting

ROOT = Path(__file__).resolve().parents[1]
# Under var/redis/ while the embedded Redis runs: its URL, which the settings read when
# REDIS_URL is unset (the same name is in config/settings/base.py, which cannot import this).
EMBEDDED_URL_FILE = "url"
# How long children get to stop after SIGTERM before SIGKILL: longer than the API waits for
# a worker (INFERENCE_TIMEOUT_S), so a request in flight when the inference worker died
# still gets its 503 rather than a dropped connection (15 s dropped them, at 30 s).
# An API that cannot reach Redis keeps a request up to GIVE_UP_GRACE_S + GIVE_UP_SKEW_S past
# its deadline, plus a last give-up try (inference/dispatch.py): 25 s covers it.
GRACE_S = float(os.environ.get("INFERENCE_TIMEOUT_S", "30")) + 25
# Stopped in this order, each group once the one before it is gone; the consumers last, after
# the drain. The platform worker (billing) neither makes nor stores usage: with the workers.
STOP_ORDER = [("api",), ("inference-worker", "training-worker", "platform-worker")]
CONSUMERS = ("usage-consumer", "training-events")
# How long the consumers get to store what is left in Redis before they are stopped anyway
# (what they did not store stays in Redis, which persists it, for the next start).
DRAIN_S = 15.0


def _worker(queue: str, pool: list[str]) -> list[str]:
    """A data-plane Celery worker on one queue."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
        *pool, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel", os.environ.get("LOG_LEVEL", "INFO"),
    ]  # fmt: skip


def api_host() -> str:
    """The address ``make run``'s API listens on: ``HOST``, else this machine only."""
    return os.environ.get("HOST", "").strip() or "127.0.0.1"


def _children(port: str) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "api": [
            # (``-m``, as the workers: an install whose scripts are not beside the interpreter
            # still finds it.)
            python,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--working-dir",
            str(ROOT / "platform"),
            "--host",
            # NOTE: this machine only unless HOST says otherwise: make run's defaults (the
            # development SECRET_KEY, ALLOWED_HOSTS *) are not for a network (a newcomer's
            # audit found it serving the API and /admin/ on every interface).
            api_host(),
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


def _stop(processes: dict[str, subprocess.Popen[bytes]], names: tuple[str, ...]) -> None:
    """SIGTERM to each, then up to GRACE_S for all of them; a child left is killed with every
    process it started."""
    stopping = [processes[name] for name in names if name in processes]
    for process in stopping:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for process in stopping:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _usage_waiting(client: redis.Redis) -> int:
    """Usage events the usage consumer has not stored yet: its group's pending entries and
    lag, at most the stream's length (the consumer deletes each entry it acknowledges, so
    the length is every event not stored; Redis's lag counter can drift past it after a
    restart: 45 events "not stored yet" of an empty stream held every stop for the whole
    drain), or the length alone (Redis before 7, or a lag it cannot tell)."""
    if not client.exists(USAGE_STREAM):
        return 0
    length = int(client.xlen(USAGE_STREAM))
    groups: list[dict[str, object]] = client.xinfo_groups(USAGE_STREAM)
    for group in groups:
        if group["name"] in (USAGE_GROUP, USAGE_GROUP.encode()):
            pending, lag = group["pending"], group.get("lag")
            if isinstance(pending, int) and isinstance(lag, int):
                return min(pending + lag, length)
    return length


def _job_events_waiting(client: redis.Redis) -> int:
    """Job events still queued: kombu's Redis transport keeps a queue as one list per
    priority step."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    queue = Queue.TRAINING_EVENTS.value
    keys = [queue, *(f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step)]
    return sum(int(client.llen(key)) for key in keys)


def _drain(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait, up to DRAIN_S, until the consumers have stored every event the API and the
    workers left in Redis (the calls answered while the API was stopping)."""
    consumers = [processes[name] for name in CONSUMERS if name in processes]
    # No retries of its own: a Redis that is not there now will not be waited for.
    client = redis.Redis.from_url(
        os.environ["REDIS_URL"], socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + DRAIN_S
    waiting = 0
    try:
        while any(process.poll() is None for process in consumers):
            waiting = _usage_waiting(client) + _job_events_waiting(client)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    except redis.RedisError as exc:
        print(f"devserver: cannot see what the consumers have left ({exc})", flush=True)
        return
    finally:
        client.close()
    if waiting:
        print(f"devserver: {waiting} events not stored yet; they stay in Redis", flush=True)


def port_refusal(host: str, port: str) -> str | None:
    """Why the API could not listen on ``host``:``port``, or None. Said before anything
    starts: a port in use (8000 often is) was ~100 lines of granian's traceback after a line
    announcing the API on it."""
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"PORT={port!r} is not a port number (1-65535)"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as granian binds)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            return (
                f"the API cannot listen on {host}:{port} ({exc.strerror}): another server may"
                f" hold it; stop that one, or run on another port: PORT=8001 make run"
            )
    return None


# make run's own sizes, handed to granian and Celery: checked first, naming the variable
# (API_PROCESSES=0 was granian's "--workers" error once half the stack had started, and
# WORKER_CONCURRENCY=0 silently Celery's default of one thread a core: an audit).
SIZES = {"API_PROCESSES": 256, "API_THREADS": 1024, "WORKER_CONCURRENCY": 4096}


def size_refusal() -> str | None:
    for name, maximum in SIZES.items():
        try:
            int_setting(os.environ, name, 1, 1, maximum)
        except ValueError as exc:
            return str(exc)
    return None


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# (Looked up here, in the parent: a child between fork and exec only calls it.)
_prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In a child, before it runs: a SIGTERM when this process dies, a kill -9 or the OOM
    killer's included (Linux; elsewhere nothing). Killed so, make run left its six children
    serving, and the next make run was refused: the port was in use (an audit)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> int:
    refused = port_refusal(api_host(), os.environ.get("PORT", "8000")) or size_refusal()
    if refused is not None:
        print(f"devserver: {refused}", file=sys.stderr, flush=True)
        return 2
    embedded = None
    if not os.environ.get("REDIS_URL"):
        directory = ROOT / "var" / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        embedded, url = start_embedded_redis(str(directory))
        os.environ["REDIS_URL"] = url
        # For `manage.py` in another terminal, which has no REDIS_URL (config/settings);
        # gone when this process ends, a crash included (a kill -9 aside).
        url_file = directory / EMBEDDED_URL_FILE
        url_file.write_text(url + "\n")
        atexit.register(url_file.unlink, missing_ok=True)
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
        processes[name] = subprocess.Popen(  # noqa: S603 - our own argv
            command, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent
        )
        print(f"devserver: started {name} (pid {processes[name].pid})", flush=True)
    host = api_host()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - compared only
    where = " (every interface: HOST)" if shown != host else ""
    print(f"devserver: API on http://{shown}:{port}{where}  (docs: /v1/docs)", flush=True)

    status = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"devserver: {name} exited with {process.returncode}; stopping", flush=True)
                status = 1
                stopping = True
                break
        if not stopping and embedded is not None and not embedded_redis_alive(embedded):
            # (Detached from this process: it ran on unseen, the stack answering 503s.)
            print("devserver: the embedded Redis exited; stopping", flush=True)
            status, stopping = 1, True
        time.sleep(0.5)

    for names in STOP_ORDER:
        _stop(processes, names)
    _drain(processes)
    _stop(processes, CONSUMERS)
    _stop(processes, tuple(name for name in processes if processes[name].poll() is None))
    if embedded is not None:
        stop_embedded_redis(embedded)
    print("devserver: stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

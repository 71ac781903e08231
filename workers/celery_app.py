"""The data plane's Celery app. No Django: a worker needs only the broker.

Run it as (threads: the tasks mostly wait on the in-process batcher, which owns the model)::

    celery -A workers.celery_app worker -Q inference -P threads -c 64 \\
        --without-gossip --without-mingle --without-heartbeat -n inference@%h
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import redis
from celery import Celery, signals
from celery.concurrency import get_implementation

from workers.contract import Queue, TaskName
from workers.liveness_step import LivenessBeat
from workers.presence import Presence, describe
from workers.settings import default_price_warning, get_settings

logger = logging.getLogger(__name__)

settings = get_settings()

# WARNING: `fixups=[]` turns off Celery's Django fix-up, which otherwise imports Django
# settings whenever DJANGO_SETTINGS_MODULE is set in the environment (as it is on a machine
# that also runs the API). A worker must never import Django.
app = Celery("workers", include=["workers.tasks", "workers.training.tasks"], fixups=[])
app.conf.update(
    broker_url=settings.redis_url,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=Queue.INFERENCE.value,
    task_routes={
        TaskName.CLASSIFY.value: {"queue": Queue.INFERENCE.value},
        TaskName.CLASSIFY_BATCH.value: {"queue": Queue.INFERENCE.value},
        TaskName.TRAIN.value: {"queue": Queue.TRAINING.value},
    },
    # The API waits seconds for an answer; a result nobody fetched is garbage after this.
    result_expires=600,
    broker_connection_retry_on_startup=True,
    # One message per thread: a busy worker must leave queued requests to idle workers.
    worker_prefetch_multiplier=1,
    # Answers go back on a per-request Redis list (workers/replies.py), so Celery's result
    # backend stores nothing. The API sends `expires` (its deadline): Celery drops a message
    # that waited longer, unrun and unbilled; the API has stopped waiting by then.
    task_ignore_result=True,
    enable_utc=True,
    broker_transport_options={
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        # NOTE: kombu's Redis transport otherwise records every message it hands out in an
        # "unacked" hash and removes it again on ack: two MULTI pipelines and two new Redis
        # client objects per task, ~20 % of the worker's Python CPU per classification
        # (measured with yappi under 32 clients). Our tasks are acknowledged on receipt
        # (acks_late=False, below) and never redelivered, so the emulation buys nothing:
        # a lost classification is a 503 the caller retries; a lost training job is caught
        # by its lease. A warm shutdown still puts prefetched messages back on the queue.
        "ack_emulation": False,
    },
)

# Retry and ack policy for inference, in one place. Early ack (not acks_late): a worker that
# dies mid-request loses that message; the API times out and the client retries with its
# idempotency key, which reuses the request id, so the retry cannot be billed twice. Late
# acks would instead re-run requests whose callers have long given up. No automatic
# retries for the same reason: a retry after the deadline is wasted work.
INFERENCE_TASK_POLICY: dict[str, Any] = {
    "acks_late": False,
    "reject_on_worker_lost": False,
    "max_retries": 0,
    "ignore_result": True,
}

# Training: early ack and no Celery retries either. A worker killed mid-job loses the
# message; the platform notices the missing heartbeats and sends a new attempt itself (at
# most one retry), which keeps "retried once, then failed" in one place and stops a broker
# redelivery from running a stale attempt beside the retry.
TRAINING_TASK_POLICY: dict[str, Any] = {
    "acks_late": False,
    "reject_on_worker_lost": False,
    "max_retries": 0,
    "ignore_result": True,
}


app.steps["consumer"].add(LivenessBeat)

_warmed_in_s: float | None = None
_devices: set[str] = set()
_served: list[str] = []  # "minilm-l6 on cpu in float32", for the start-up log
_emulated_bf16 = False  # bf16 asked for on a CPU without bf16 instructions


def _warm() -> None:
    global _warmed_in_s, _emulated_bf16
    # NOTE: the solo pool (training worker) sends worker_process_init after worker_init:
    # warm once, and log the first load's time rather than the second's 0.00 s.
    if _warmed_in_s is not None:
        return
    from workers.runtime.classifier import get_engine
    from workers.runtime.encoder import BASE_MODELS
    from workers.runtime.precision import emulated_bf16

    began = time.perf_counter()
    engine = get_engine()
    for base_model in BASE_MODELS:
        encoder = engine.runtime(base_model).encoder
        _devices.add(encoder.device.type)
        _served.append(f"{base_model} on {encoder.device.type} in {encoder.numerics}")
        _emulated_bf16 = _emulated_bf16 or emulated_bf16(encoder.dtype, encoder.device)
    _warmed_in_s = time.perf_counter() - began


@signals.worker_init.connect
def _warm_in_worker(sender: Any = None, **_: Any) -> None:
    """Load the model before the worker consumes, so the first request is not slow.

    With a prefork pool the tasks run in child processes: loading torch in the parent before
    the fork would waste memory and risk a fork with live threads, so children warm up in
    ``worker_process_init`` instead.
    """
    pool = get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    if pool.__module__ != "celery.concurrency.prefork":
        _warm()


@signals.worker_process_init.connect
def _warm_in_child(**_: Any) -> None:
    _warm()


# The loggers of Celery's per-task INFO lines: "Task ... received" and "... succeeded".
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@signals.after_setup_logger.connect
def _quiet_task_lines(**_: Any) -> None:
    """Per-task lines only when WORKER_LOG_TASKS is on (settings.log_tasks says why);
    warnings and errors (a task that raised) are logged either way."""
    if not settings.log_tasks:
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_ready.connect
def _log_warm(**_: Any) -> None:
    # Logged here, not in _warm: logging is not configured yet when worker_init fires.
    if _warmed_in_s is not None:
        logger.info("inference models loaded in %.2f s: %s", _warmed_in_s, ", ".join(_served))
    if _emulated_bf16:
        logger.warning(
            "WORKER_PRECISION=bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX):"
            " torch emulates it, ~14x slower than fp32; set WORKER_PRECISION=fp32"
        )
    for device_type in sorted(_devices):
        warning = default_price_warning(device_type)
        if warning is not None:
            logger.warning(warning)


_presence: Presence | None = None


def _engine_stats() -> tuple[dict[str, float], dict[str, Any]]:
    """What this worker's report carries about its models (``workers/presence.py``): this
    process's (a prefork pool's children are not added up; workers here run threads or
    solo)."""
    totals = dict.fromkeys(("texts", "forwards", "busy_ms", "real_tokens", "padded_tokens"), 0.0)
    # NOTE: read, never made here: a prefork pool's parent has no engine (its children
    # do) and must not import torch for one.
    classifier = sys.modules.get("workers.runtime.classifier")
    engine = getattr(classifier, "_engine", None)
    if engine is None:
        return totals, {"models": [], "batches": "", "model_threads": 0, "fine_tuned_loaded": 0}
    models, batches, threads = [], set(), 1
    for base_model, runtime in sorted(engine.loaded().items()):
        stats = runtime.batcher.stats()
        for counter in ("texts", "forwards", "busy_ms", "real_tokens", "padded_tokens"):
            totals[counter] += getattr(stats, counter)
        # Each base model's batcher has model threads of its own: busy is per model.
        totals[f"busy_ms:{base_model}"] = stats.busy_ms
        encoder = runtime.encoder
        models.append(f"{base_model} on {encoder.device.type} in {encoder.numerics}")
        batcher = runtime.batcher
        batches.add(f"{batcher.max_batch_size} rows / {batcher.max_batch_tokens} tokens")
        threads = max(threads, batcher.model_threads)
    serving = {"models": models, "batches": "; ".join(sorted(batches)), "model_threads": threads,
               "fine_tuned_loaded": len(engine.fine_tuned)}  # fmt: skip
    return totals, serving


@signals.worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    """Start writing this worker's presence (its consumer names it and its queues)."""
    global _presence
    if sender is None or _presence is not None:
        return
    queues = list(sender.app.amqp.queues.consume_from or {})
    static = describe(
        name=sender.hostname, queues=queues, settings=settings, started_at=time.time()
    )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    _presence = Presence(client, static, _engine_stats, interval=settings.presence_interval_s)
    _presence.start()


@signals.worker_shutdown.connect
def _close(**_: Any) -> None:
    from workers.runtime import classifier

    if _presence is not None:
        _presence.stop()
    if classifier._engine is not None:
        classifier._engine.close()

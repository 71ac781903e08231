"""The Celery entry point on the ``training`` queue: one message per attempt of a job.

Run a training worker with one job at a time (training uses every core it is given)::

    celery -A workers.celery_app worker -Q training -P solo -n training@%h \\
        --without-gossip --without-mingle --without-heartbeat
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from functools import cache

import redis

from workers import liveness
from workers.artifacts import ArtifactMissingError, ArtifactStore
from workers.celery_app import TRAINING_TASK_POLICY, app
from workers.contract import (
    ATTEMPT_TAKEN_TTL_S,
    CONTRACT_VERSION,
    TaskName,
    TrainRequest,
    TrainResult,
    TrainSucceeded,
    UsageEvent,
    attempt_key,
    attempt_taken_key,
    cancel_key,
)
from workers.presence import busy_with
from workers.settings import get_settings
from workers.usage import cost_micros

from .events import EventPublisher, Heartbeat
from .runner import (
    JobBudgetError,
    JobCancelledError,
    JobContext,
    TrainingDataError,
    TrainingDivergedError,
    train_run,
)

logger = logging.getLogger(__name__)

# Seconds between heartbeats; the platform retries a job after FINETUNE_HEARTBEAT_TIMEOUT_S
# (default 60) without one, so this must stay well below that.
HEARTBEAT_S = float(os.environ.get("TRAINING_HEARTBEAT_S", "5"))
INTERNAL_ERROR = "The training worker failed unexpectedly; the error has been logged."


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def usage_event_for(request: TrainRequest, result: TrainResult) -> UsageEvent:
    """The job's one usage event, costed at this pool's hardware price: keyed by the job id,
    so retries and redeliveries of a finished job are billed once (the ledger's unique event
    id). It travels inside the ``succeeded`` event (``succeeded_data``), not on the usage
    stream: the platform records it only if it marks the job succeeded."""
    return {
        **compute_event_for(request, result["compute_ms"]),
        "kind": "fine_tune",
        "inputs": int(result["metrics"].get("train_examples", 0)),  # type: ignore[call-overload]
        "tokens": result["trained_tokens"],
    }


def compute_event_for(request: TrainRequest, compute_ms: float) -> UsageEvent:
    """What an attempt that did not succeed used, costed at this pool's price: it rides in
    the job's ``failed`` or ``cancelled`` event, and the platform records it as a cost that
    is never billed (a failed or cancelled job's training was paid for all the same)."""
    return {
        "v": CONTRACT_VERSION,
        "event_id": request["job_id"],
        "kind": "compute",
        "tenant_id": request["tenant_id"],
        "api_key_id": request["api_key_id"],
        "livemode": request["livemode"],
        "model": request["model_id"],
        "inputs": 0,
        "tokens": 0,
        "compute_ms": compute_ms,
        "cached": 0,
        "occurred_at": datetime.now(UTC).isoformat(),
        "worker": os.uname().nodename,
        "cost_micros": cost_micros(compute_ms),
        "cost_currency": get_settings().currency,
        "pool": get_settings().pool,
    }


def succeeded_data(request: TrainRequest, result: TrainResult) -> TrainSucceeded:
    """What the ``succeeded`` event carries: the result and the usage to bill for it."""
    return {**result, "usage": usage_event_for(request, result)}


@app.task(name=TaskName.TRAIN.value, **TRAINING_TASK_POLICY)
def train(request: TrainRequest) -> None:
    job_id = request["job_id"]
    client = _redis()

    def superseded(current: bytes | str | None) -> bool:
        # The platform has since scheduled another attempt (this one was presumed dead).
        if current is not None and int(current) != request["attempt"]:
            logger.info("job %s attempt %s superseded by %s", job_id, request["attempt"],
                        int(current))  # fmt: skip
            return True
        return False

    if superseded(client.get(attempt_key(job_id))):
        return
    taken = attempt_taken_key(job_id, request["attempt"])
    if not client.set(taken, os.uname().nodename, nx=True, ex=ATTEMPT_TAKEN_TTL_S):
        # NOTE: acks_late is off, so no message of an attempt is ever redelivered: this is
        # a second send of it (the platform's send raised after the broker took the first).
        logger.warning("job %s attempt %s taken already: a second message of it dropped",
                       job_id, request["attempt"])  # fmt: skip
        return
    publisher = EventPublisher(app, request)
    given_up = False  # the step that stopped it read another attempt's number

    def cancelled() -> bool:
        """At each step boundary: the platform cancelled the job, or gave this attempt up
        for another (it went silent past the heartbeat timeout, and came back: it trained to
        the end for a result that was thrown away, while the new attempt waited behind it on
        a one-job worker). One round trip. And the worker's liveness beat: the job holds the
        solo pool's event loop, whose timer beats while it is idle (workers/liveness.py)."""
        liveness.beat()
        pipe = client.pipeline(transaction=False)
        pipe.exists(cancel_key(job_id))
        pipe.get(attempt_key(job_id))
        try:
            cancel, current = pipe.execute()
        except redis.RedisError:
            # Redis restarting: training goes on, and the next step asks again (a cancel set
            # meanwhile is seen then; the platform's lease covers a longer outage).
            logger.warning("job %s: cannot ask Redis whether it is cancelled", job_id)
            return False
        nonlocal given_up
        given_up = superseded(current)
        return bool(cancel) or given_up

    if cancelled():
        # The platform asked it to stop: the user cancelled it, or the account was suspended.
        publisher.emit("cancelled", "The worker stopped the job before it started.")
        return
    publisher.emit("started", f"Attempt {request['attempt']} started.")
    settings = get_settings()
    ctx = JobContext(
        request=request,
        store=ArtifactStore(),
        emit=publisher.emit,
        cancelled=cancelled,
        device=settings.device,
        threads=settings.torch_threads,
        precision=settings.precision,
        deadline=time.monotonic() + float(limit)
        if (limit := request.get("time_limit_s"))
        else None,
    )
    began = time.perf_counter()

    def used() -> dict[str, object]:
        """What the attempt used so far, for its end's event and each heartbeat: billed
        never, a cost always."""
        return {"usage": compute_event_for(request, (time.perf_counter() - began) * 1000)}

    with Heartbeat(publisher, HEARTBEAT_S, used), busy_with(f"fine-tuning {job_id}"):
        try:
            result = train_run(ctx)
            ctx.step(timed=False)  # done: only a cancel can stop it now
        except JobCancelledError:
            if not given_up:  # else its events are ignored
                publisher.emit(
                    "cancelled", "The worker stopped the job; training stopped.", data=used()
                )
            return
        except (TrainingDataError, ArtifactMissingError) as exc:
            publisher.emit("failed", str(exc), level="error",
                           data={"code": "invalid_data", **used()})  # fmt: skip
            return
        except JobBudgetError as exc:
            # Unbilled, as every failed job: only a success carries billable usage.
            publisher.emit("failed", str(exc), level="error", data={"code": exc.code, **used()})
            return
        except TrainingDivergedError as exc:
            publisher.emit("failed", str(exc), level="error",
                           data={"code": "training_diverged", **used()})  # fmt: skip
            return
        except Exception:
            logger.exception("fine-tuning job %s failed", job_id)
            publisher.emit("failed", INTERNAL_ERROR, level="error",
                           data={"code": "internal", **used()})  # fmt: skip
            return
        # NOTE: no usage event of our own. The usage rides in the success, and the platform
        # writes it to the ledger in the transaction that marks the job succeeded: a job it
        # marks succeeded is always metered, and one cancelled before this event is applied
        # (the cancel wins) is never billed.
        publisher.emit(
            "succeeded",
            f"Fine-tuned model {request['model_id']} is ready.",
            data=dict(succeeded_data(request, result)),
        )

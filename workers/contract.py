"""The typed contract between the control plane (platform/) and the data plane (workers/).

Both sides import this module and nothing else of each other. It is standard library, and
for the result cache's keys ``workers.text_form`` (the ``tokenizers`` package: Rust, no
torch), so that the API can import it without torch and a worker without Django. Changing
a name or a field here is an API change between the two sides: bump ``CONTRACT_VERSION`` and
keep readers tolerant of the previous version while both are deployed. (An optional field
that readers of both versions do without, such as ``WorkerError.param``, needs no bump: the
version names what a side must understand, and a bump flags every older worker.)
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime
from typing import Literal, NotRequired, TypedDict, cast

from workers.text_form import text_as_read

CONTRACT_VERSION = 1


class Queue(enum.StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"
    TRAINING_EVENTS = "training_events"


class TaskName(enum.StrEnum):
    CLASSIFY = "workers.classify"  # args: [ClassifyRequest]
    # args: [list[ClassifyRequest]]: what one API process had in flight at once, in one
    # message (each request still gets its own answer and usage event). The API sends this
    # one; deploy workers that know it before API processes that send it.
    CLASSIFY_BATCH = "workers.classify_batch"
    TRAIN = "workers.train"


# Answers travel back on a per-request Redis list, not through Celery's result backend: the
# API blocks on one BLPOP instead of a pub/sub subscription per request, the cheapest wait
# Redis offers. The answer of a call that may be retried under its request id (it carries an
# Idempotency-Key: ``ClassifyRequest.keep_result``) is also kept under ``result_key`` for a
# while, so that a retry that arrives after the API gave up is served without re-running.
REPLY_TTL_S = 60
RESULT_TTL_S = 600


def reply_key(request_id: str) -> str:
    return f"reply:{request_id}"


def result_key(request_id: str) -> str:
    return f"result:{request_id}"


# An API that stopped waiting for an answer (its 503 ``worker_timeout``) marks the request
# abandoned, atomically with a last look for the answer: a worker that finishes after that
# delivers nothing and meters nothing (the caller was told it failed). Kept this long,
# past any message's run. A retry under the same Idempotency-Key clears it.
ABANDONED_TTL_S = 600
# An API waits for an answer until the request's deadline and then gives up as above. Should
# Redis be unreachable then (restarting, stalled), it keeps trying for at most this long
# past the deadline before it answers 503 whatever happens. So an answer that reaches Redis
# later than that (by Redis's own clock) has nobody waiting for it, marked or not: a worker
# delivers and meters it no more than an abandoned one (``workers.replies``). It also covers
# clock skew between the API's machine and Redis's.
GIVE_UP_GRACE_S = 10.0


def abandoned_key(request_id: str) -> str:
    return f"abandoned:{request_id}"


# Usage events are JSON documents appended to this Redis stream (field ``event``) in the same
# transaction that delivers the answer, so an answered call is always metered; the
# platform's usage consumer reads them as consumer group ``USAGE_GROUP`` (at least once:
# acknowledged only after the ledger commit, de-duplicated by the ledger's unique event id).
USAGE_STREAM = "usage:events"
USAGE_GROUP = "ledger"

# Limits shared by validation in the API and defensive checks in the worker.
MAX_INPUTS = 96
MAX_INPUT_CHARS = 10_000
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
MAX_EXAMPLES = 256
# The examples' texts together: the encoder reads at most 256 tokens (~1,000 characters) of
# each, so this bounds a request's example work near that of 96 full inputs (256 examples
# of 10,000 characters took ~7 s of a worker, billed as one input, starving other calls).
MAX_EXAMPLES_CHARS = 100_000
# The encoder reads at most this many tokens of a text, special tokens included
# (sentence-transformers' max_seq_length for all-MiniLM-L6-v2).
MAX_TEXT_TOKENS = 256
# Share of each label a fine-tune holds out for validation when the job names no validation
# set (the worker's split; the API's token budget estimate counts the rows it leaves).
VALIDATION_SHARE = 0.2


def held_out_rows(label_rows: int, share: float = VALIDATION_SHARE) -> int:
    """Rows of one label held out: ``share`` of them, at least one, and at least one left
    to train on."""
    return min(max(1, round(label_rows * share)), label_rows - 1)


class Example(TypedDict):
    text: str
    label: str


class ClassifyRequest(TypedDict):
    v: int
    request_id: str
    tenant_id: str
    api_key_id: str
    livemode: bool
    model: str  # the public model id the customer asked for
    base_model: str  # the encoder that serves it, e.g. "minilm-l6"
    inputs: list[str]
    labels: list[str] | None
    examples: list[Example] | None
    deadline: float  # unix seconds; a worker drops a request it picks up after this
    # Content hash of a fine-tuned model's artifact in the artifact store; absent or None for
    # base models. Older workers ignore it (they cannot serve fine-tuned models anyway).
    artifact: NotRequired[str | None]
    # Result cache: when set, the worker stores each answered row under
    # ``result_cache_keys(cache_version, labels, examples, inputs)`` for ``cache_ttl_s``.
    cache_version: NotRequired[str | None]
    cache_ttl_s: NotRequired[int]
    # Partial cache hit: the rows the API found in the result cache (each with its original
    # ``index`` and the ``tokens`` it took); ``inputs`` then holds only the other inputs, in
    # order. The worker answers with every row and meters the call as a whole, the found rows
    # as cached. Workers go before API processes that send it (an older worker would answer
    # and meter only ``inputs``).
    cached_rows: NotRequired[list[CachedRow]]
    # Whether the answer is kept under ``result_key`` for ``RESULT_TTL_S``: only a call with
    # an Idempotency-Key can be retried under the same request id. Any other's copy is kept
    # only until its API can no longer be giving up on it (``workers.replies``), for the
    # API's last look. Absent: kept, as older API processes expect.
    keep_result: NotRequired[bool]
    # The plan version the API admitted the call under, carried onto its usage event: the
    # call is priced by it, however late the event is recorded. Absent: the tenant's plan
    # when the event is recorded.
    plan_id: NotRequired[str]
    # When the API admitted the call (unix seconds), which dates its usage event: a call
    # answered after its billing period ended is counted (its quota reservation) and billed in
    # the period it was admitted in. Absent: dated when answered.
    admitted_at: NotRequired[float]


def request_dated(request: ClassifyRequest) -> datetime:
    """When a call's usage happened: when the API admitted it (``admitted_at``), else now."""
    admitted = request.get("admitted_at")
    return datetime.fromtimestamp(admitted, UTC) if admitted else datetime.now(UTC)


class CachedRow(TypedDict):
    """One input's row as the result cache holds it: the row and the tokens it took."""

    index: int
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool
    tokens: int


def cached_row_split(entry: CachedRow) -> tuple[ClassificationRow, int]:
    """A cached row as an answer's row, and the tokens its input took."""
    row = {key: value for key, value in entry.items() if key != "tokens"}
    return cast(ClassificationRow, row), int(entry.get("tokens", 0))


def input_indices(request: ClassifyRequest) -> list[int]:
    """Where each of ``request["inputs"]`` stands in the customer's request: 0..n-1, or
    the positions the cached rows left free."""
    taken = {row["index"] for row in request.get("cached_rows") or []}
    total = len(request["inputs"]) + len(taken)
    return [index for index in range(total) if index not in taken]


# The result cache's keys' prefix, changed with the way inputs are read into them: rows keyed
# the way before (NFKC, "rc:") are never looked up again (a full-width BAD's row was plain
# BAD's key under the new reading), and lapse with their TTL.
CACHE_KEY_SCHEME = "rc2"


def result_cache_keys(
    version: str, labels: list[str] | None, examples: list[Example] | None, texts: list[str]
) -> list[str]:
    """Where each input's classification is cached: the model version (a fine-tuned model's
    artifact hash, so a retrained model never serves stale answers), the request's label set
    and examples (hashed once for all its inputs), and the input as the encoder reads it
    (``text_as_read``)."""
    task = json.dumps([labels, examples], sort_keys=True, separators=(",", ":"))
    prefix = hashlib.sha256(f"{version}\n{task}".encode())
    keys = []
    for text in texts:
        digest = prefix.copy()
        digest.update(text_as_read(text).encode())
        keys.append(f"{CACHE_KEY_SCHEME}:{version}:{digest.hexdigest()}")
    return keys


class ClassificationRow(TypedDict):
    index: int
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool  # the input was longer than the encoder's window and was cut


class Usage(TypedDict):
    inputs: int
    tokens: int
    compute_ms: float
    cached: int


class WorkerError(TypedDict):
    code: str
    message: str
    # The request's parameter at fault (``labels[2]``), where one is; older workers send none.
    param: NotRequired[str]


class ClassifyResult(TypedDict):
    v: int
    request_id: str
    model: str
    results: list[ClassificationRow]
    usage: Usage
    error: NotRequired[WorkerError]
    row_tokens: NotRequired[list[int]]  # tokens each input took (the result cache meters hits)
    # An error's: the deadline of the attempt it answers. Attempts of one call (retries under
    # an Idempotency-Key) share its request id; a retry waits on for its own answer when an
    # earlier attempt's error comes first.
    deadline: NotRequired[float]


class UsageEvent(TypedDict):
    v: int
    event_id: str  # the request id: one billable call, one id, one ledger row
    # fine_tune: event_id is the job id; compute: the same, for a job that did not succeed
    # (its cost, never billed: it rides in the job's "failed" or "cancelled" event)
    kind: Literal["inference", "fine_tune", "compute"]
    tenant_id: str
    api_key_id: str
    livemode: bool
    model: str
    inputs: int
    tokens: int
    compute_ms: float
    cached: int
    occurred_at: str  # ISO 8601, UTC
    worker: str  # hostname of the worker that served it
    # Cost to serve: compute_ms x the pool's hardware price, in micro-units of the pool's
    # currency, as a decimal string (money is never a float). Absent from v1 producers.
    cost_micros: NotRequired[str]
    # The currency of cost_micros (the pool's WORKER_CURRENCY, lower case). Absent from
    # older producers: the platform then takes its own COST_CURRENCY.
    cost_currency: NotRequired[str]
    pool: NotRequired[str]
    plan_id: NotRequired[str]  # as on the ClassifyRequest


# --- Training (fine-tuning) -------------------------------------------------------------------
# The platform sends one TrainRequest per attempt as a Celery task on Queue.TRAINING; the
# worker reads datasets from and writes models to the artifact store, and reports everything
# back as JobEvent messages (plain JSON, like usage) on Queue.TRAINING_EVENTS. It never
# touches the database.

TRAINING_EVENTS_EXCHANGE = "training_events"
TRAINING_EVENTS_ROUTING_KEY = "training_events"

TrainMethod = Literal["head", "lora"]
JobEventType = Literal[
    "started", "heartbeat", "progress", "log", "succeeded", "failed", "cancelled"
]


def cancel_key(job_id: str) -> str:
    """Redis key the platform sets when a job is cancelled; workers check it between steps."""
    return f"finetune:cancel:{job_id}"


def attempt_key(job_id: str) -> str:
    """Redis key holding a job's current attempt number: a worker that picks up an older
    attempt's message (a redelivery after a retry was scheduled) drops it."""
    return f"finetune:attempt:{job_id}"


def attempt_taken_key(job_id: str, attempt: int) -> str:
    """Redis key a worker sets (NX) when it starts an attempt: a second message of the same
    attempt (a send that raised after the broker had taken the message, sent again by the
    platform's sweep) finds it set and is dropped, rather than trained a second time."""
    return f"finetune:taken:{job_id}:{attempt}"


# How long an attempt's mark outlives its start: longer than any message waits on the queue.
ATTEMPT_TAKEN_TTL_S = 7 * 86400


class Hyperparameters(TypedDict, total=False):
    epochs: int
    learning_rate: float
    batch_size: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str]


class TrainRequest(TypedDict):
    v: int
    job_id: str
    attempt: int  # 1 for the first run; a retry after a lost worker is attempt 2
    tenant_id: str
    api_key_id: str
    livemode: bool
    base_model: str
    method: TrainMethod
    model_id: str  # the public id the model gets on success (ft:minilm-l6:<suffix>:<id>)
    training_file: str  # artifact hash of the normalised JSONL training set
    validation_file: str | None  # None: hold out a stratified split of the training set
    hyperparameters: Hyperparameters
    seed: int
    # The job's budget, set by the platform (absent: none, as from an older platform). A
    # job whose trained tokens (epochs x its training examples' tokens, what it is billed
    # on) would pass ``max_trained_tokens`` fails before it trains (``token_budget_exceeded``);
    # one still running ``time_limit_s`` after its attempt started stops at its next step
    # boundary and fails (``time_limit_exceeded``). Older workers ignore both.
    max_trained_tokens: NotRequired[int]
    time_limit_s: NotRequired[float]


class TrainResult(TypedDict):
    artifact: str  # content hash of the model file
    labels: list[str]
    # accuracy, macro_f1, per_label_f1, validation_examples, train_examples; on a base model
    # with an int8 tier also int8_accuracy, int8_macro_f1, int8_per_label_f1 and
    # int8_accuracy_delta (points, int8 - fp32) for the same head on int8 weights.
    metrics: dict[str, object]
    trained_tokens: int
    compute_ms: float


class TrainSucceeded(TrainResult):
    """The ``data`` of a ``succeeded`` job event: the result, and the job's usage.

    The worker does not meter a fine-tune itself: the platform writes ``usage`` to the
    ledger in the transaction that marks the job succeeded, so a job it does not mark
    succeeded (cancelled while this event was on its way, failed, a stale attempt) is never
    billed. ``usage`` is absent from workers that published it to ``USAGE_STREAM``
    themselves (before this field): the platform then records nothing (the ledger's unique
    event id, the job id, would make a second row a no-op anyway). Deploy the platform's
    job-events consumer before training workers that send it: an older consumer ignores it,
    and the job would go unbilled."""

    usage: NotRequired[UsageEvent]


class JobEvent(TypedDict):
    v: int
    job_id: str
    attempt: int
    seq: int  # per attempt, from 1: (job_id, attempt, seq) identifies an event
    type: JobEventType
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, object]  # progress: epoch, loss, accuracy; succeeded: a TrainSucceeded
    occurred_at: str  # ISO 8601, UTC
    worker: str


# Defaults applied to a job's hyperparameters (the job object shows the resolved values) and
# the bounds the API enforces.
HYPERPARAMETER_DEFAULTS: dict[str, Hyperparameters] = {
    "head": {"epochs": 10, "learning_rate": 0.01, "batch_size": 32},
    "lora": {
        "epochs": 3,
        "learning_rate": 0.001,
        "batch_size": 16,
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "lora_dropout": 0.05,
        "target_modules": ["query", "value"],
    },
}
LORA_TARGET_MODULES = ("query", "key", "value")
# A LoRA step keeps every row's activations for its backward pass (~57 MB a row at 256
# tokens, measured): 256 rows a step, which the API took, was ~14.6 GB, past a training
# worker's memory; 32 is ~1.8 GB.
LORA_MAX_BATCH_SIZE = 32

# The int8 tier of each fp32 base model: a fine-tuned model on the key is measured on its
# validation split with the value's int8 weights, and offered as a variant on it when the
# accuracy it loses is within the platform's threshold (FINETUNE_INT8_MAX_LOSS_POINTS).
INT8_BASE_MODELS = {"minilm-l6": "minilm-l6-int8"}

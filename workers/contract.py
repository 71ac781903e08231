"""The typed contract between the control plane (platform/) and the data plane (workers/).

Both sides import this module and nothing else of each other. It is pure standard library so
that the API can import it without torch and a worker without Django. Changing a name or a
field here is an API change between the two sides: bump ``CONTRACT_VERSION`` and keep readers
tolerant of the previous version while both are deployed.
"""

from __future__ import annotations

import enum
from typing import Literal, NotRequired, TypedDict

CONTRACT_VERSION = 1


class Queue(enum.StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"
    USAGE = "usage"


class TaskName(enum.StrEnum):
    CLASSIFY = "workers.classify"


# Usage events are plain JSON messages (not Celery tasks) published to this exchange with
# this routing key; the platform's usage consumer reads them from ``Queue.USAGE``.
USAGE_EXCHANGE = "usage"
USAGE_ROUTING_KEY = "usage"

# Limits shared by validation in the API and defensive checks in the worker.
MAX_INPUTS = 96
MAX_INPUT_CHARS = 10_000
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
MAX_EXAMPLES = 256


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


class ClassifyResult(TypedDict):
    v: int
    request_id: str
    model: str
    results: list[ClassificationRow]
    usage: Usage
    error: NotRequired[WorkerError]


class UsageEvent(TypedDict):
    v: int
    event_id: str  # the request id: one billable call, one id, one ledger row
    kind: Literal["inference"]
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

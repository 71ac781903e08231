"""Error codes and the messages clients see, in one place (the API passes them through)."""

from __future__ import annotations

from workers.contract import CONTRACT_VERSION, ClassifyRequest, ClassifyResult, WorkerError

EXPIRED = "expired"
MODEL_UNAVAILABLE = "model_unavailable"
INVALID_REQUEST = "invalid_request"
# Zero-shot labels whose prompts the encoder reads as one (the API refuses the cases it can
# tell; the tokenizer is the judge of the rest: emoji and symbols outside its vocabulary).
DUPLICATE_LABEL = "duplicate_label"
DUPLICATE_LABEL_MESSAGE = (
    "labels[{index}] {label!r} is the same class to the model as labels[{first}] {other!r}: "
    "it reads both the same (characters outside its vocabulary, such as most emoji, all "
    "read as one unknown token). Use labels in words."
)
WORKER_ERROR = "worker_error"

EXPIRED_MESSAGE = "The request was not started before its deadline."
WORKER_ERROR_MESSAGE = "The worker failed while serving this request."
MODEL_UNAVAILABLE_MESSAGE = "Base model {model!r} is not served by this worker."
NEEDS_LABELS_MESSAGE = "A base model needs 'labels' or 'examples'."
BAD_INPUTS_MESSAGE = "'inputs' must hold 1 to {limit} strings."
INPUT_TOO_LONG_MESSAGE = "Input {index} is longer than {limit} characters."
BAD_LABELS_MESSAGE = (
    "'labels' must hold 1 to {limit} non-empty strings of at most {chars} characters."
)
BAD_EXAMPLES_MESSAGE = "'examples' must hold at most {limit} items with a text and a label."
EXAMPLE_LABEL_MESSAGE = "Example {index} has label {label!r}, which is not in 'labels'."


def error_result(
    request: ClassifyRequest, code: str, message: str, param: str | None = None
) -> ClassifyResult:
    """A result that carries an error instead of classifications; nothing was computed."""
    error: WorkerError = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    result: ClassifyResult = {
        "v": CONTRACT_VERSION,
        "request_id": request.get("request_id", ""),
        "model": request.get("model", ""),
        "results": [],
        "usage": {"inputs": 0, "tokens": 0, "compute_ms": 0.0, "cached": 0},
        "error": error,
    }
    if "deadline" in request:
        result["deadline"] = request["deadline"]
    return result

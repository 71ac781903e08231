"""The worker's own check of a classify request against the contract's limits: the API
validated it already; a message from elsewhere on the queue (an older API, a hand-made one)
must not reach the model with anything the contract refuses."""

from __future__ import annotations

from workers import errors
from workers.contract import (
    MAX_EXAMPLES,
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    ClassifyRequest,
)


class InvalidRequestError(ValueError):
    """The request breaks the contract's limits; the message is safe to show the client."""


def check_inputs(request: ClassifyRequest) -> None:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise InvalidRequestError(errors.BAD_INPUTS_MESSAGE.format(limit=MAX_INPUTS))
    for index, text in enumerate(inputs):
        if not isinstance(text, str):
            raise InvalidRequestError(errors.BAD_INPUTS_MESSAGE.format(limit=MAX_INPUTS))
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidRequestError(
                errors.INPUT_TOO_LONG_MESSAGE.format(index=index, limit=MAX_INPUT_CHARS)
            )


def check_request(request: ClassifyRequest) -> tuple[list[str], list[tuple[str, str]]]:
    """Defensive re-check of what the API validates; returns (label set, examples)."""
    check_inputs(request)
    labels, raw_examples = request.get("labels"), request.get("examples")
    if not labels and not raw_examples:
        raise InvalidRequestError(errors.NEEDS_LABELS_MESSAGE)

    bad_labels = errors.BAD_LABELS_MESSAGE.format(limit=MAX_LABELS, chars=MAX_LABEL_CHARS)
    examples: list[tuple[str, str]] = []
    if raw_examples:
        bad_examples = errors.BAD_EXAMPLES_MESSAGE.format(limit=MAX_EXAMPLES)
        if not isinstance(raw_examples, list) or len(raw_examples) > MAX_EXAMPLES:
            raise InvalidRequestError(bad_examples)
        for example in raw_examples:
            text = example.get("text") if isinstance(example, dict) else None
            label = example.get("label") if isinstance(example, dict) else None
            if not isinstance(text, str) or not isinstance(label, str) or not label:
                raise InvalidRequestError(bad_examples)
            if len(label) > MAX_LABEL_CHARS or len(text) > MAX_INPUT_CHARS:
                raise InvalidRequestError(bad_examples)
            examples.append((text, label))

    if labels:
        if not isinstance(labels, list) or len(labels) > MAX_LABELS:
            raise InvalidRequestError(bad_labels)
        if not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in labels):
            raise InvalidRequestError(bad_labels)
        label_set = list(dict.fromkeys(labels))  # de-duplicated, order kept
        known = set(label_set)
        for index, (_, label) in enumerate(examples):
            if label not in known:
                raise InvalidRequestError(
                    errors.EXAMPLE_LABEL_MESSAGE.format(index=index, label=label)
                )
    else:
        label_set = list(dict.fromkeys(label for _, label in examples))
        if len(label_set) > MAX_LABELS:
            raise InvalidRequestError(bad_labels)
    return label_set, examples

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import InvalidRequest, TooLarge
from core.serializers import BoundedListField, StrictSerializer, StrictStringField
from workers.contract import (
    MAX_EXAMPLES,
    MAX_EXAMPLES_CHARS,
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
)

from . import messages
from .invisible import INVISIBLE

_VISIBLE = re.compile(f"[^{INVISIBLE}]")


def has_visible_text(text: str) -> bool:
    return _VISIBLE.search(text) is not None


def _visible_string(max_length: int) -> dict[str, Any]:
    """A string with something visible in it and no NUL, as an OpenAPI schema."""
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "pattern": f"^[^\\x00]*[^{INVISIBLE}][^\\x00]*$"}  # fmt: skip


@extend_schema_field(_visible_string(MAX_INPUT_CHARS))
class InputTextField(StrictStringField):
    """A text to classify: not blank; longer than the limit is a 413 (see validate_inputs)."""

    blank_is_refused = True  # by validate_inputs (400 empty_input), not by DRF


@extend_schema_field(
    {
        "type": "array",
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_LABEL_CHARS,
            # Something visible, and no NUL.
            "pattern": f"^[^\\x00]*[^{INVISIBLE}][^\\x00]*$",
        },
        "minItems": 2,
        "maxItems": MAX_LABELS,
        "uniqueItems": True,
        "nullable": True,
    }
)
class LabelsField(BoundedListField):
    """Zero-shot classes: distinct, non-empty."""


@extend_schema_field(_visible_string(MAX_INPUT_CHARS))
class ExampleTextField(StrictStringField):
    """Checked for something visible in ClassifyRequestSerializer.validate."""


@extend_schema_field(_visible_string(MAX_LABEL_CHARS))
class ExampleLabelField(StrictStringField):
    """Checked for something visible in ClassifyRequestSerializer.validate."""


class ExampleSerializer(StrictSerializer):
    text = ExampleTextField(allow_blank=False, max_length=MAX_INPUT_CHARS)
    label = ExampleLabelField(allow_blank=False, max_length=MAX_LABEL_CHARS)  # type: ignore[assignment]  # the stubs reserve this name


class ClassifyRequestSerializer(StrictSerializer):
    # A base model needs labels or examples (else 400 missing_labels); a fine-tuned model
    # (``ft:``) takes neither. (The rest, labels the model reads alike, example labels among
    # the labels, are said in the operation's description: no schema says them.)
    schema_rules: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["labels"], "properties": {"labels": {"type": "array"}}},
            {"required": ["examples"], "properties": {"examples": {"type": "array"}}},
            {"properties": {"model": {"pattern": "^ft:"}}},
        ]
    }
    model = StrictStringField(max_length=200)
    inputs = BoundedListField(
        child=InputTextField(allow_blank=True),
        min_length=1,
        max_length=MAX_INPUTS,
        help_text=f"1 to {MAX_INPUTS} texts, each at most {MAX_INPUT_CHARS} characters.",
    )
    labels = LabelsField(
        child=StrictStringField(allow_blank=False, max_length=MAX_LABEL_CHARS),
        min_length=2,
        max_length=MAX_LABELS,
        required=False,
        allow_null=True,
        help_text="Zero-shot: the classes to choose from (base models only).",
    )
    # NOTE: a ListSerializer built by hand: ``ExampleSerializer(many=True, allow_null=True)``
    # hands allow_null to each item too, and a null example then reached validate().
    examples: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ExampleSerializer(),
        required=False,
        allow_null=True,
        max_length=MAX_EXAMPLES,
        help_text=(
            "Few-shot: labelled examples (base models only). With labels, each example's "
            "label must be one of them; without, the examples need at least two labels. "
            f"Their texts together at most {MAX_EXAMPLES_CHARS} characters (else 413)."
        ),
    )

    def validate_inputs(self, inputs: list[str]) -> list[str]:
        for index, text in enumerate(inputs):
            if len(text) > MAX_INPUT_CHARS:
                # NOTE: a status of its own (413), per the contract, not a 400.
                raise TooLarge(
                    messages.INPUT_TOO_LONG.format(
                        index=index, length=len(text), limit=MAX_INPUT_CHARS
                    ),
                    code="input_too_long",
                    param=f"inputs[{index}]",
                )
            if not has_visible_text(text):
                raise InvalidRequest(
                    messages.EMPTY_INPUT.format(index=index),
                    code="empty_input",
                    param=f"inputs[{index}]",
                )
        return inputs

    def validate_labels(self, labels: list[str] | None) -> list[str] | None:
        if labels:
            seen: set[str] = set()
            for index, label in enumerate(labels):
                if not has_visible_text(label):  # embedded as it is: nothing to compare with
                    raise InvalidRequest(
                        messages.INVISIBLE_LABEL, code="invalid_parameter", param=f"labels[{index}]"
                    )
                if label in seen:
                    raise InvalidRequest(
                        messages.DUPLICATE_LABEL.format(label=label),
                        code="duplicate_label",
                        param=f"labels[{index}]",  # as the other duplicates are named
                    )
                seen.add(label)
        return labels

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        labels, examples = attrs.get("labels"), attrs.get("examples")
        if labels:
            # A label with examples is their centroid; one without is its name, embedded.
            _refuse_labels_alike(labels, {example["label"] for example in examples or []})
        if examples:
            _refuse_invisible_examples(examples)
            length = sum(len(example["text"]) for example in examples)
            if length > MAX_EXAMPLES_CHARS:
                raise TooLarge(
                    messages.EXAMPLES_TOO_LARGE.format(length=length, limit=MAX_EXAMPLES_CHARS),
                    code="examples_too_large",
                    param="examples",
                )
            if labels:
                known = set(labels)
                for index, example in enumerate(examples):
                    if example["label"] not in known:
                        raise InvalidRequest(
                            messages.EXAMPLE_LABEL_UNKNOWN.format(
                                index=index, label=example["label"]
                            ),
                            code="unknown_label",
                            param=f"examples[{index}].label",
                        )
            elif (count := len({example["label"] for example in examples})) < 2:
                raise InvalidRequest(
                    messages.EXAMPLES_NEED_TWO_LABELS, code="invalid_parameter", param="examples"
                )
            elif count > MAX_LABELS:
                # (The worker's own check of it was a 503 "retry" that failed every retry.)
                raise InvalidRequest(
                    messages.EXAMPLES_TOO_MANY_LABELS.format(count=count, limit=MAX_LABELS),
                    code="invalid_parameter",
                    param="examples",
                )
        return attrs


def _refuse_invisible_examples(examples: list[dict[str, str]]) -> None:
    """An example's text is embedded into its label's centroid and its label names a class:
    one with nothing visible teaches nothing, and names nothing a reader can tell apart."""
    for index, example in enumerate(examples):
        for field in ("text", "label"):
            if not has_visible_text(example[field]):
                raise InvalidRequest(
                    messages.EMPTY_EXAMPLE.format(index=index, field=field),
                    code="invalid_parameter",
                    param=f"examples[{index}].{field}",
                )


def label_as_read(label: str) -> str:
    """A label as the base encoder reads it: all-MiniLM-L6-v2's tokenizer is uncased (it
    lowercases and drops accents) and splits on whitespace, so "Coffee", "coffee " and
    "COFFEE" are one label to it, as are "café" (in either Unicode form) and "cafe"."""
    decomposed = unicodedata.normalize("NFD", label.lower())
    return " ".join("".join(c for c in decomposed if unicodedata.category(c) != "Mn").split())


def _labels_alike(labels: list[str], skip: set[str] | None = None) -> tuple[int, int] | None:
    """(index, index of the earlier one) of the first label (not in ``skip``) the encoder
    reads as an earlier one, or None."""
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if skip and label in skip:
            continue
        first = seen.setdefault(label_as_read(label), index)
        if first != index:
            return index, first
    return None


def _refuse_labels_alike(labels: list[str], with_examples: set[str]) -> None:
    """Labels embedded from their names (those without examples) that the encoder cannot
    tell apart split one class's score between them (50/50), and which one is reported is
    arbitrary: a 400. NOTE: an approximation of the tokenizer (case, accents, whitespace);
    the worker refuses the rest by their prompts' token ids (workers/runtime/classifier.py)."""
    alike = _labels_alike(labels, with_examples)
    if alike is not None:
        index, first = alike
        raise InvalidRequest(
            messages.SAME_LABEL_TO_MODEL.format(
                index=index, label=labels[index], first=first, other=labels[first]
            ),
            code="duplicate_label",
            param=f"labels[{index}]",
        )


# Lone UTF-16 surrogates (JSON "\ud800"): DRF's CharField refuses them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_FAST_FIELDS = frozenset({"model", "inputs", "labels"})


def plain_text(value: object, limit: int) -> bool:
    return (
        type(value) is str
        and 0 < len(value) <= limit
        and "\x00" not in value
        and _SURROGATE.search(value) is None
    )


def classify_request_fast(data: object) -> dict[str, Any] | None:
    """``ClassifyRequestSerializer``'s validated data for the common, plainly valid request
    (a model, inputs, optional labels), or None: then the serializer decides, and names
    what is wrong.

    NOTE: measured, the serializer costs ~0.3-0.6 ms of CPU a request (DRF deep-copies its
    fields for every instance), about a tenth of the API's own time on a classification.
    This accepts a subset of what the serializer accepts and returns the same data;
    tests/platform/test_classify_validation.py checks both over good and bad bodies."""
    if type(data) is not dict or not data.keys() <= _FAST_FIELDS:
        return None
    model, inputs = data.get("model"), data.get("inputs")
    if not plain_text(model, 200):
        return None
    if type(inputs) is not list or not 0 < len(inputs) <= MAX_INPUTS:
        return None
    for text in inputs:
        if not plain_text(text, MAX_INPUT_CHARS) or not has_visible_text(text):
            return None
    validated: dict[str, Any] = {"model": model, "inputs": inputs}
    if "labels" in data:
        labels = data["labels"]
        if labels is not None:
            if type(labels) is not list or not 2 <= len(labels) <= MAX_LABELS:
                return None
            for label in labels:
                if not plain_text(label, MAX_LABEL_CHARS) or not has_visible_text(label):
                    return None
            if len(set(labels)) != len(labels) or _labels_alike(labels) is not None:
                return None
        validated["labels"] = labels
    return validated


class ClassificationRowSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]  # the stubs reserve this name
    score = serializers.FloatField()
    scores = serializers.DictField(child=serializers.FloatField())
    truncated = serializers.BooleanField(
        help_text="The text was longer than the model's window (256 tokens) and was cut."
    )


class ClassificationUsageSerializer(serializers.Serializer[Any]):
    inputs = serializers.IntegerField()
    tokens = serializers.IntegerField()
    compute_ms = serializers.FloatField()
    cached = serializers.IntegerField()


class ClassificationSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField(help_text="Unix seconds.")
    model = serializers.CharField()
    results = ClassificationRowSerializer(many=True)
    usage = ClassificationUsageSerializer()


class ModelSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    type = serializers.ChoiceField(choices=["base", "fine_tuned"])
    base_model = serializers.CharField()
    owned_by = serializers.CharField()
    description = serializers.CharField()
    status = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField(), allow_null=True)
    metrics = serializers.DictField(
        allow_null=True,
        help_text=(
            "Fine-tuned models: validation `accuracy`, `macro_f1`, `per_label_f1`, "
            "`validation_examples`, `train_examples`; on a model trained on an fp32 base also "
            "`int8_accuracy`, `int8_macro_f1`, `int8_per_label_f1` and `int8_accuracy_delta` "
            "(points, int8 - fp32) of the same model on int8 weights. An int8 variant's "
            "metrics are its own."
        ),
    )
    created_at = serializers.DateTimeField()
    int8_variant = serializers.CharField(
        allow_null=True,
        help_text=(
            "The id of this fine-tuned model's int8 variant (same labels, cheaper int8 tier), "
            "registered only when it lost at most the allowed points of validation accuracy "
            "(1 by default); null otherwise. Deleting this model deletes the variant too."
        ),
    )
    parent_model = serializers.CharField(
        allow_null=True, help_text="An int8 variant: the fine-tuned model it serves on int8."
    )
    accuracy_delta = serializers.FloatField(
        allow_null=True,
        help_text=(
            "An int8 variant: its validation accuracy minus its parent's, in percentage "
            "points (e.g. -0.5)."
        ),
    )


class ModelListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = ModelSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()

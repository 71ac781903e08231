from __future__ import annotations

from typing import Any

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from core.errors import InvalidRequest
from core.serializers import (
    DistinctListField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
    StrictStringField,
)
from workers.contract import LORA_MAX_BATCH_SIZE, LORA_TARGET_MODULES

from . import messages
from .services import SUFFIX_RE

LORA_ONLY = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")


@extend_schema_field({"type": "string", "enum": list(LORA_TARGET_MODULES)})
class TargetModuleField(StrictStringField):
    """One of LORA_TARGET_MODULES (checked with its own message in validate_target_modules)."""


class HeadHyperparametersSerializer(StrictSerializer):
    epochs = StrictIntegerField(
        min_value=1,
        max_value=100,
        required=False,
        help_text=(
            "Passes over the training examples. A job's trained tokens (epochs x its training"
            " examples' tokens, what it is billed on) are capped per job: a job estimated over"
            " the cap is refused (400 token_budget_exceeded, param hyperparameters.epochs),"
            " one the worker counts over it fails before training, unbilled; a job still"
            " training at its time limit fails with time_limit_exceeded, unbilled."
        ),
    )
    learning_rate = StrictFloatField(min_value=1e-6, max_value=1.0, required=False)
    batch_size = StrictIntegerField(min_value=1, max_value=256, required=False)


class HyperparametersSerializer(HeadHyperparametersSerializer):
    """Every method's hyperparameters; the LORA_ONLY ones are refused for a head, and a LoRA
    batch past LORA_MAX_BATCH_SIZE (``FineTuneCreateSerializer.validate``)."""

    lora_rank = StrictIntegerField(min_value=1, max_value=64, required=False)
    lora_alpha = StrictFloatField(min_value=0.01, max_value=1024.0, required=False)
    lora_dropout = StrictFloatField(min_value=0.0, max_value=0.9, required=False)
    target_modules = DistinctListField(
        child=TargetModuleField(),
        min_length=1,
        max_length=len(LORA_TARGET_MODULES),
        required=False,
        help_text=f"Attention projections to adapt: any of {list(LORA_TARGET_MODULES)}.",
    )

    def validate_target_modules(self, value: list[str]) -> list[str]:
        for name in value:
            if name not in LORA_TARGET_MODULES:
                raise InvalidRequest(
                    messages.UNKNOWN_TARGET.format(name=name, choices=list(LORA_TARGET_MODULES)),
                    code="invalid_parameter",
                    param="hyperparameters.target_modules",
                )
        if len(set(value)) != len(value):
            # As a label or a parameter given twice: said, not merged silently.
            raise InvalidRequest(
                messages.TARGET_TWICE,
                code="invalid_parameter",
                param="hyperparameters.target_modules",
            )
        return value


@extend_schema_field({"type": "string", "pattern": f"^{SUFFIX_RE.pattern}$"})
class SuffixField(StrictStringField):
    """Checked with its own message in validate_suffix."""


class FineTuneCreateSerializer(StrictSerializer):
    base_model = StrictStringField(max_length=200)
    training_dataset = StrictStringField(max_length=64)
    validation_dataset = StrictStringField(max_length=64, required=False, allow_null=True)
    method = serializers.ChoiceField(choices=["head", "lora"], required=False, default="head")
    hyperparameters = HyperparametersSerializer(required=False)
    # (null as a job shows one without: a job's fields copied into a new request)
    suffix = SuffixField(
        max_length=40, required=False, allow_blank=True, allow_null=True, default=""
    )
    seed = StrictIntegerField(min_value=0, max_value=2**31 - 1, required=False, default=0)

    def validate_suffix(self, value: str | None) -> str:
        if value and not SUFFIX_RE.fullmatch(value):
            raise InvalidRequest(messages.SUFFIX, code="invalid_parameter", param="suffix")
        return value or ""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        hyper = attrs.get("hyperparameters") or {}
        if attrs.get("method") == "lora" and hyper.get("batch_size", 0) > LORA_MAX_BATCH_SIZE:
            raise InvalidRequest(
                messages.LORA_BATCH.format(limit=LORA_MAX_BATCH_SIZE),
                code="invalid_parameter",
                param="hyperparameters.batch_size",
            )
        if attrs.get("method", "head") == "head":
            for name in LORA_ONLY:
                if name in hyper:
                    raise InvalidRequest(
                        messages.HYPERPARAMETER_FOR_LORA.format(name=name),
                        code="invalid_parameter",
                        param=f"hyperparameters.{name}",
                    )
        return attrs


# What the OpenAPI document says a create request is: one of these two shapes (a head takes
# no LoRA hyperparameters). FineTuneCreateSerializer validates, with messages that say why.
class HeadFineTuneCreateSerializer(FineTuneCreateSerializer):
    method = serializers.ChoiceField(choices=["head"], required=False, default="head")
    hyperparameters = HeadHyperparametersSerializer(required=False)  # type: ignore[assignment]


class LoraHyperparametersSerializer(HyperparametersSerializer):
    batch_size = StrictIntegerField(min_value=1, max_value=LORA_MAX_BATCH_SIZE, required=False)


class LoraFineTuneCreateSerializer(FineTuneCreateSerializer):
    method = serializers.ChoiceField(choices=["lora"])
    hyperparameters = LoraHyperparametersSerializer(required=False)


FINE_TUNE_CREATE_REQUEST = PolymorphicProxySerializer(
    component_name="FineTuneCreateRequest",
    serializers=[HeadFineTuneCreateSerializer, LoraFineTuneCreateSerializer],
    resource_type_field_name=None,
)


class ErrorInfoSerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    message = serializers.CharField()


class FineTuneSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    )
    base_model = serializers.CharField()
    method = serializers.ChoiceField(choices=["head", "lora"])
    training_dataset = serializers.CharField()
    validation_dataset = serializers.CharField(allow_null=True)
    hyperparameters = serializers.DictField(help_text="As resolved, defaults included.")
    suffix = serializers.CharField(allow_null=True)
    seed = serializers.IntegerField()
    fine_tuned_model = serializers.CharField(allow_null=True, help_text="Set on success.")
    trained_tokens = serializers.IntegerField(allow_null=True, help_text="epochs x tokens.")
    metrics = serializers.DictField(
        allow_null=True,
        help_text=(
            "On the validation split: `accuracy`, `macro_f1`, `per_label_f1`, "
            "`validation_examples`, `train_examples`. For a base model with an int8 tier, "
            "the same head measured on int8 weights: `int8_accuracy`, `int8_macro_f1`, "
            "`int8_per_label_f1` and `int8_accuracy_delta` (percentage points, int8 - fp32). "
            "When the loss is at most the allowed points (1 by default) the job also "
            "registers the int8 variant `ft:<int8 base model>:<suffix>:<id>` (see the "
            "model's `int8_variant`); the job's events say whether it was offered and why."
        ),
    )
    error = ErrorInfoSerializer(allow_null=True)
    attempt = serializers.IntegerField(help_text="2 after a retry on a lost worker.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class FineTuneListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = FineTuneSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()


class FineTuneEventSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.DateTimeField()
    level = serializers.ChoiceField(choices=["info", "warning", "error"])
    type = serializers.CharField(
        help_text="`started`, `succeeded`, `failed`, `cancelled` (the job's status changes), "
        "`progress` (an epoch's loss and validation accuracy in `data`) or `log` (a message; "
        "`level` says whether it warns)."
    )
    message = serializers.CharField()
    data = serializers.DictField()  # type: ignore[assignment]  # the stubs reserve this name


class FineTuneEventListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = FineTuneEventSerializer(many=True)  # type: ignore[assignment]  # reserved name
    has_more = serializers.BooleanField()

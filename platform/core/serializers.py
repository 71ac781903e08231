"""Serializer building blocks that are strict the way a careful API client wants:
unknown parameters are errors (a typo must not be silently ignored), and strings must be
JSON strings (DRF would otherwise turn 42 into "42")."""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework import serializers

from .errors import InvalidRequest


class StrictStringField(serializers.CharField):
    default_error_messages = {
        "invalid": "Must be a string.",
        # NOTE: PostgreSQL cannot store NUL in text or jsonb: refuse it here, as bad input.
        "null_character": "Must not contain NUL (\\u0000) characters.",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if "\x00" in data:
            self.fail("null_character")
        return str(super().to_internal_value(data))


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not "5", not true, not 5.0."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A JSON number: not "0.1", not true."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class BoundedListField(serializers.ListField):
    """A list refused for its length before its items are checked: DRF checks every item,
    building an error for each bad one, and the length only after. 500,000 numbers as a
    classification's ``inputs`` (1 MB) took 9.4 s to refuse, 5,000,000 (10 MB) over a minute
    and gigabytes of the API process's memory (an audit)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, list) and self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class DistinctListField(BoundedListField):
    """A list whose items must differ (its serializer refuses a repeat with its own message); the
    OpenAPI document says so (``uniqueItems``, core.schema)."""


class StrictSerializer(serializers.Serializer[Any]):
    # Rules across fields, as a JSON Schema can say them (``anyOf`` ...): added to the
    # request body's schema (core.schema), so that a body the schema calls valid is one the
    # API can take, and a fuzzer's "valid" bodies are.
    schema_rules: ClassVar[dict[str, Any]] = {}

    def to_internal_value(self, data: Any) -> Any:
        # Nested (an example in a list, hyperparameters), the error goes up through DRF,
        # which adds its place (``examples[1]``, ``examples[1].z``) to the param.
        nested = self.parent is not None
        if not isinstance(data, dict):
            if nested:
                raise serializers.ValidationError("Must be a JSON object.", code="invalid")
            raise InvalidRequest(
                "The request body must be a JSON object.", code="invalid_request_body"
            )
        unknown = [name for name in data if name not in self.fields]
        if unknown:
            message = f"Received unknown parameter: {unknown[0]}."
            if nested:
                raise serializers.ValidationError(
                    {str(unknown[0]): [message]}, code="unknown_parameter"
                )
            raise InvalidRequest(message, code="unknown_parameter", param=str(unknown[0]))
        return super().to_internal_value(data)


def validated(serializer_class: type[serializers.Serializer[Any]], data: Any) -> dict[str, Any]:
    if data is None:  # a JSON ``null`` body: DRF would say "No data provided", as missing
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_request_body")
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class ErrorDetailSerializer(serializers.Serializer[Any]):
    type = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer[Any]):
    error = ErrorDetailSerializer()


class DeletedSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()

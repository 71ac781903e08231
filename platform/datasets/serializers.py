from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.serializers import StrictSerializer


class DatasetUploadSerializer(StrictSerializer):
    """Documents the multipart body (the view reads the file itself, and refuses any other
    field, as a strict serializer would)."""

    file = serializers.FileField(
        help_text='JSONL ({"text", "label"} per line) or CSV with a \'text,label\' header.'
    )


class DatasetIssueSerializer(serializers.Serializer[Any]):
    line = serializers.IntegerField(allow_null=True, help_text="1-based; null: the whole file.")
    message = serializers.CharField()


class DatasetSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    filename = serializers.CharField()
    format = serializers.ChoiceField(choices=["jsonl", "csv"], allow_null=True)
    bytes = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["valid", "invalid"])
    rows = serializers.IntegerField(help_text="Examples that passed validation.")
    labels = serializers.DictField(
        child=serializers.IntegerField(), help_text="label -> rows, by label"
    )
    errors = DatasetIssueSerializer(many=True, help_text="The first 100 problems.")  # type: ignore[assignment]  # the stubs reserve this name
    error_count = serializers.IntegerField(
        help_text="All problems found, reported or not (reading stops at the 10,000th)."
    )
    warnings = DatasetIssueSerializer(many=True)
    sha256 = serializers.CharField(help_text="Content hash of the uploaded file.")
    created_at = serializers.DateTimeField()


class DatasetListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = DatasetSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()

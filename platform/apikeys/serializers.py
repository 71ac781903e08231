from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

from core.moments import (
    FIRST_INSTANT,
    LAST_INSTANT,
    from_unix_seconds,
    moment_schema,
    rfc3339_parse,
    utc_clamped,
)
from core.serializers import (
    BoundedListField,
    StrictIntegerField,
    StrictSerializer,
    StrictStringField,
)

from .models import ApiKey, Scope


class MomentField(serializers.DateTimeField):
    """A moment as /v1/usage takes one: an RFC 3339 date-time (core.moments: DRF's own
    refused a lower-case "t" or "z" and a leap second, which its published format allows),
    a date (midnight UTC) or unix seconds, as Stripe writes them (an audit: a key's
    ``expires_at`` refused the two forms ``start`` and ``end`` take)."""

    default_error_messages = {
        "beyond": "Unix seconds past the year 9999 (milliseconds, perhaps?): give seconds.",
    }

    def to_internal_value(self, value: Any) -> datetime:
        moment = None
        if isinstance(value, str):
            moment = rfc3339_parse(value, full_date=True)
        elif isinstance(value, int) and not isinstance(value, bool):
            moment = from_unix_seconds(value)
            if moment in (FIRST_INSTANT, LAST_INSTANT):
                # Not a moment a datetime holds: stored as year 9999's last instant, a key's
                # expiry was another than the one sent (a milliseconds timestamp, often).
                self.fail("beyond")
        if moment is None:
            self.fail("invalid", format="RFC 3339 (2030-01-31T12:00:00Z), a date or unix seconds")
        # In UTC, as stored: 9999-12-31T23:59:59-01:00 is past year 9999 there (its last
        # instant), and a database write of it was a 500.
        return utc_clamped(moment)


class MomentFieldSchema(OpenApiSerializerFieldExtension):
    """The forms a ``MomentField`` takes, null among them where it allows null."""

    target_class = MomentField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> Any:
        return moment_schema(nullable=self.target.allow_null)


class ApiKeyCreateSerializer(StrictSerializer):
    name = StrictStringField(max_length=200, required=False, allow_blank=True, default="")
    scopes = BoundedListField(
        child=serializers.ChoiceField(choices=Scope.choices), min_length=1, max_length=4
    )
    # No default: left out, a key made by an expiring key expires with it; null says "never",
    # which such a key cannot grant (403 expiry_escalation).
    expires_at = MomentField(
        required=False,
        allow_null=True,
        help_text="Must be in the future. Null: never expires. Left out: never, or, made by a "
        "key that expires, when that key does.",
    )
    mode = serializers.ChoiceField(choices=ApiKey.Mode.choices, required=False)


class ApiKeyRotateSerializer(StrictSerializer):
    grace_period_seconds = StrictIntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=7 * 24 * 3600,
        help_text="How long the old secret keeps working (0 = stops now; at most 7 days).",
    )


class ApiKeySerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.SerializerMethodField()  # (always sent: required in the schema)
    name = serializers.CharField()
    mode = serializers.ChoiceField(choices=ApiKey.Mode.choices)
    prefix = serializers.CharField(help_text="The start of the secret, for recognising it.")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), source="scope_list"
    )
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    previous_secret_expires_at = serializers.DateTimeField(allow_null=True)

    def get_object(self, instance: Any) -> str:
        return "api_key"


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    secret = serializers.CharField(
        allow_null=True,
        help_text="Shown once. Store it now; it cannot be retrieved. A replay of the request "
        "(same Idempotency-Key) answers null here: only a hash of the secret is kept; rotate "
        "the key if the first answer was lost.",
    )


class ApiKeyListSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = ApiKeySerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    has_more = serializers.BooleanField()

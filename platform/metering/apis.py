from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.errors import InvalidRequest
from core.moments import (
    FIRST_INSTANT,
    LAST_INSTANT,
    from_unix_seconds,
    moment_schema,
    rfc3339_parse,
    utc_clamped,
)
from core.views import TenantAPIView
from limits.services import enforcement_for

from .selectors import GROUP_FIELDS, usage_summary


class UsageMetricsSerializer(serializers.Serializer[Any]):
    requests = serializers.IntegerField(
        help_text="Classification calls made, a call voided by a usage correction included."
    )
    inputs = serializers.IntegerField(
        help_text="Classification inputs (what a plan's included inputs and cap count). Net of"
        " usage corrections."
    )
    cached = serializers.IntegerField(
        help_text="Of the inputs, those answered from the result cache (billed as inputs"
        " where the plan's cached_inputs_billed is true). Net of usage corrections."
    )
    tokens = serializers.IntegerField(
        help_text="The classification inputs' tokens. Net of usage corrections."
    )
    compute_ms = serializers.FloatField(help_text="Compute time of the classifications.")
    fine_tunes = serializers.IntegerField(
        help_text="Fine-tune jobs metered (a job that succeeded), one voided included."
    )
    trained_tokens = serializers.IntegerField(
        help_text="The fine-tune jobs' trained tokens (examples x epochs), what they are billed"
        " by. Net of usage corrections."
    )
    amount = serializers.IntegerField(
        help_text="Minor currency units (cents): classifications and fine-tunes together."
    )
    currency = serializers.CharField()


class UsageRowSerializer(UsageMetricsSerializer):
    day = serializers.CharField(required=False, help_text="With group_by=day (UTC).")
    model = serializers.CharField(required=False, help_text="With group_by=model.")
    api_key = serializers.CharField(required=False, help_text="With group_by=api_key.")


class UsageReportSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group_by = serializers.ChoiceField(choices=list(GROUP_FIELDS))
    currency = serializers.CharField()
    data = UsageRowSerializer(many=True)  # type: ignore[assignment]  # the stubs reserve this name
    total = UsageMetricsSerializer()


_UNIX_SECONDS = re.compile(r"-?[0-9]+")
_MICROSECOND = timedelta(microseconds=1)
# Accepted and published (OpenAPI) forms of start and end.
MOMENT_SCHEMA = moment_schema()
MOMENT_FORMATS = (
    "An RFC 3339 date-time (2026-11-28T10:00:00Z, 2026-11-28T10:00:00.5+05:30; UTC without "
    "an offset), a date (2026-11-28, midnight UTC) or unix seconds. Years 0001-9999; a moment "
    "outside them in UTC, or unix seconds beyond them, is clamped to the first or last instant."
)
INVALID_MOMENT = "{param} must be an RFC 3339 date-time, a date (years 0001-9999) or unix seconds."


def _from_unix_seconds(raw: str) -> datetime:
    try:
        seconds = int(raw)
    except ValueError:  # more digits than Python converts: far outside datetime's range
        return FIRST_INSTANT if raw.startswith("-") else LAST_INSTANT
    return from_unix_seconds(seconds)


def _parse_moment(raw: str, param: str) -> datetime:
    """An aware datetime, as the client gave it (see MOMENT_FORMATS)."""
    if _UNIX_SECONDS.fullmatch(raw):
        return _from_unix_seconds(raw)
    moment = rfc3339_parse(raw, full_date=True)
    if moment is None:
        raise InvalidRequest(
            INVALID_MOMENT.format(param=param), code="invalid_parameter", param=param
        )
    return moment


class UsageApi(TenantAPIView):
    required_scopes = {"GET": Scope.BILLING}
    query_parameters = {"GET": frozenset({"start", "end", "group_by"})}

    @extend_schema(
        operation_id="usage",
        parameters=[
            OpenApiParameter(
                "start",
                MOMENT_SCHEMA,
                description="Inclusive, not after end (equal: an empty range); default: the "
                "start of the UTC month in which the range ends (this month when end is not "
                "given). " + MOMENT_FORMATS,
            ),
            OpenApiParameter(
                "end", MOMENT_SCHEMA, description="Exclusive; default: now. " + MOMENT_FORMATS
            ),
            OpenApiParameter("group_by", str, enum=list(GROUP_FIELDS), description="Default day."),
        ],
        responses={200: UsageReportSerializer},
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        params = request.query_params
        # NOTE: an empty start= or end= is no moment: a 400, not the default.
        end = _parse_moment(params["end"], "end") if "end" in params else now
        if "start" in params:
            start = _parse_moment(params["start"], "start")
        else:  # the start of the UTC month that end's last instant is in
            utc_end = utc_clamped(end)
            last = utc_end - min(_MICROSECOND, utc_end - FIRST_INSTANT)
            start = last.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        # NOTE: start = end is a valid, empty range (an empty report), as any half-open one.
        if start > end:
            raise InvalidRequest(
                "start must not be after end.", code="invalid_parameter", param="start"
            )
        # Compared as given (exact), then clamped: year 1 at +05:00 is before datetime's
        # range in UTC, and no usage exists out there.
        start, end = utc_clamped(start), utc_clamped(end)
        group_by = params.get("group_by", "day")
        if group_by not in GROUP_FIELDS:
            raise InvalidRequest(
                "group_by must be one of day, model, api_key.",
                code="invalid_parameter",
                param="group_by",
            )
        summary = usage_summary(
            tenant=self.tenant,
            plan=enforcement_for(self.api_key).plan,
            livemode=self.api_key.livemode,
            start=start,
            end=end,
            group_by=group_by,
        )
        return Response(UsageReportSerializer(summary).data)

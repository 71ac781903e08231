from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.errors import InvalidRequest
from core.views import TenantAPIView
from limits.services import enforcement_for

from .selectors import GROUP_FIELDS, usage_summary


class UsageMetricsSerializer(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    inputs = serializers.IntegerField()
    tokens = serializers.IntegerField()
    compute_ms = serializers.FloatField()
    amount = serializers.IntegerField(help_text="Minor currency units (cents).")
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


def _parse_moment(raw: str, param: str) -> datetime:
    """ISO 8601 date or datetime (UTC if no offset), or unix seconds."""
    moment: datetime | None = None
    try:
        if raw.isdigit():
            moment = datetime.fromtimestamp(int(raw), tz=UTC)
        else:
            moment = parse_datetime(raw)
            if moment is None and (day := parse_date(raw)) is not None:
                moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        moment = None
    if moment is None:
        raise InvalidRequest(
            f"{param} must be an ISO 8601 date or datetime, or unix seconds.",
            code="invalid_parameter",
            param=param,
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class UsageApi(TenantAPIView):
    required_scopes = {"GET": Scope.BILLING}

    @extend_schema(
        operation_id="usage",
        parameters=[
            OpenApiParameter(
                "start", str, description="Inclusive; default: start of this month (UTC)."
            ),
            OpenApiParameter("end", str, description="Exclusive; default: now."),
            OpenApiParameter("group_by", str, enum=list(GROUP_FIELDS), description="Default day."),
        ],
        responses={200: UsageReportSerializer},
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        params = request.query_params
        start = (
            _parse_moment(params["start"], "start")
            if params.get("start")
            else now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        )
        end = _parse_moment(params["end"], "end") if params.get("end") else now
        if start >= end:
            raise InvalidRequest(
                "start must be before end.", code="invalid_parameter", param="start"
            )
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

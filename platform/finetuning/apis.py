from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.pagination import LIST_PARAMETERS, LIST_QUERY, list_body, paginate
from core.serializers import ErrorSerializer, StrictSerializer, validated
from core.views import TenantAPIView

from .models import FineTuneJob
from .selectors import (
    fine_tune_event_to_dict,
    fine_tune_events,
    fine_tune_get,
    fine_tune_list,
    fine_tune_to_dict,
)
from .serializers import (
    FINE_TUNE_CREATE_REQUEST,
    FineTuneCreateSerializer,
    FineTuneEventListSerializer,
    FineTuneEventSerializer,
    FineTuneListSerializer,
    FineTuneSerializer,
)
from .services import fine_tune_cancel, fine_tune_create


def _job(job: FineTuneJob) -> Any:
    # Rendered through the documented serializer: the body is plain JSON (an idempotent
    # replay stores it) and cannot drift from the OpenAPI document.
    return FineTuneSerializer(fine_tune_to_dict(job)).data


class FineTuneListCreateApi(TenantAPIView):
    required_scopes = {"GET": Scope.TRAINING, "POST": Scope.TRAINING}
    # An unpaid subscription's 402 is decided at admission, whatever the body, as for a
    # classification (a job's body errors came first: a 404 for a dataset, then the 402).
    billable = True
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="fine_tunes_list",
        parameters=LIST_PARAMETERS,
        responses={200: FineTuneListSerializer},
    )
    def get(self, request: Request) -> Response:
        page, has_more = paginate(
            fine_tune_list(tenant=self.tenant, livemode=self.api_key.livemode),
            query_params=request.query_params,
        )
        return Response(list_body(page, has_more, _job))

    def check_body(self, request: Request) -> None:
        validated(FineTuneCreateSerializer, request.data)

    @extend_schema(
        operation_id="fine_tunes_create",
        request=FINE_TUNE_CREATE_REQUEST,
        responses={
            201: FineTuneSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "Invalid request (the error names the parameter); among them a job whose"
                    " trained tokens (epochs x its training examples' tokens, estimated from"
                    " the dataset) are over the per-job budget, smaller in test mode:"
                    " token_budget_exceeded, param hyperparameters.epochs."
                ),
            ),
            429: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "Rate limited (see Retry-After); or, for a test-mode key, the tenant's"
                    " test-mode fine-tuning jobs for the UTC day are used up"
                    " (test_mode_fine_tune_limit; Retry-After: the seconds to midnight UTC)."
                ),
            ),
            402: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "The plan does not include fine-tuning (fine_tuning_not_in_plan) or LoRA "
                    "(lora_not_in_plan), its fine-tuned model limit is reached "
                    "(fine_tuned_model_limit), or it is unpaid (subscription_unpaid)."
                ),
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(FineTuneCreateSerializer, request.data)
        job = fine_tune_create(
            tenant=self.tenant,
            api_key=self.api_key,
            base_model=data["base_model"],
            training_dataset_id=data["training_dataset"],
            validation_dataset_id=data.get("validation_dataset"),
            method=data["method"],
            hyperparameters=dict(data.get("hyperparameters") or {}),
            suffix=data["suffix"],
            seed=data["seed"],
        )
        return Response(_job(job), status=201)


class FineTuneDetailApi(TenantAPIView):
    required_scopes = {"GET": Scope.TRAINING}

    @extend_schema(operation_id="fine_tunes_retrieve", responses={200: FineTuneSerializer})
    def get(self, request: Request, job_id: str) -> Response:
        job = fine_tune_get(
            tenant=self.tenant, job_id=job_id, livemode=self.api_key.livemode, param="id"
        )
        return Response(_job(job))


class FineTuneEventsApi(TenantAPIView):
    required_scopes = {"GET": Scope.TRAINING}
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="fine_tunes_events",
        parameters=LIST_PARAMETERS,
        responses={200: FineTuneEventListSerializer},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = fine_tune_get(
            tenant=self.tenant, job_id=job_id, livemode=self.api_key.livemode, param="id"
        )
        page, has_more = paginate(fine_tune_events(job=job), query_params=request.query_params)
        return Response(
            list_body(
                page, has_more, lambda e: FineTuneEventSerializer(fine_tune_event_to_dict(e)).data
            )
        )


class FineTuneCancelApi(TenantAPIView):
    required_scopes = {"POST": Scope.TRAINING}

    @extend_schema(
        operation_id="fine_tunes_cancel",
        request=None,
        responses={
            200: FineTuneSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="The job has ended (`job_not_cancellable`: succeeded, failed or "
                "cancelled), or the Idempotency-Key was reused with another body or is still "
                "in progress.",
            ),
        },
    )
    def post(self, request: Request, job_id: str) -> Response:
        # It takes no parameters: any sent is refused by name, as everywhere (an empty body
        # or an empty object is fine).
        validated(StrictSerializer, {} if request.stream is None else request.data)
        job = fine_tune_cancel(tenant=self.tenant, job_id=job_id, livemode=self.api_key.livemode)
        return Response(_job(job))

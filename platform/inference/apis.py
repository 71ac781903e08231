from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.errors import APIError
from core.pagination import LIST_PARAMETERS, LIST_QUERY, list_body, paginate
from core.serializers import DeletedSerializer, ErrorSerializer, validated
from core.views import TenantAPIView
from limits.hits import HitMeter
from workers.contract import MAX_INPUTS, USAGE_STREAM

from .cache import hit_event_parts, prefetch_keys
from .selectors import model_get_visible, model_list_visible, model_to_dict
from .serializers import (
    ClassificationSerializer,
    ClassifyRequestSerializer,
    ModelListSerializer,
    ModelSerializer,
    classify_request_fast,
    plain_text,
)
from .services import classify, classify_model_check, model_delete

_UNPARSED: Any = object()


class ClassifyApi(TenantAPIView):
    required_scopes = {"POST": Scope.INFERENCE}
    billable = True
    _plain: Any = _UNPARSED

    def _plain_body(self, request: Request) -> dict[str, Any] | None:
        """``classify_request_fast``'s answer for this request, worked out once (admission
        and the view both read it)."""
        if self._plain is _UNPARSED:
            self._plain = classify_request_fast(request.data)
        return cast(dict[str, Any] | None, self._plain)

    def metered_inputs(self, request: Request) -> int:
        data = request.data
        inputs = data.get("inputs") if isinstance(data, dict) else None
        # Reserve what a valid request would run; an invalid one is refunded when it ends.
        return len(inputs) if isinstance(inputs, list) and 0 < len(inputs) <= MAX_INPUTS else 0

    def _valid_body(self, request: Request) -> dict[str, Any]:
        """The request's body, checked: plainly valid ones without the serializer. A model
        the key cannot see is the first thing said of any other body (404), before what else
        is wrong with it: no fix to the rest would make that call run."""
        data = self._plain_body(request)
        if data is not None:
            return data
        raw = request.data
        try:
            return validated(ClassifyRequestSerializer, raw)
        except (APIError, ValidationError):
            # Looked up only for a body refused anyway: a valid one meets its model once, in
            # classify_model_check. A text the database cannot take (NUL, half a surrogate
            # pair) is no model's id, and keeps the serializer's 400.
            model_id = raw.get("model") if isinstance(raw, dict) else None
            if plain_text(model_id, 200):
                model_get_visible(
                    tenant=self.tenant, model_id=cast(str, model_id),
                    livemode=self.api_key.livemode, param="model",
                )  # fmt: skip
            raise

    def check_body(self, request: Request) -> None:
        data = self._valid_body(request)
        classify_model_check(
            tenant=self.tenant, api_key=self.api_key, model_id=data["model"],
            labels=data.get("labels"), examples=data.get("examples"),
        )  # fmt: skip

    def admission_prefetch(self, request: Request) -> Sequence[str]:
        # The result cache's rows for this request, read in its admission round trip.
        data = self._plain_body(request)
        if data is None or settings.RESULT_CACHE_TTL_S <= 0:
            return ()
        return prefetch_keys(
            tenant_id=self.api_key.tenant_id,
            livemode=self.api_key.livemode,
            model_id=data["model"],
            inputs=data["inputs"],
            labels=data.get("labels"),
        )

    def admission_meter(
        self, request: Request, rows: int, confirm: bytes | None
    ) -> HitMeter | None:
        # A base model's call with labels (what its cache rows are keyed by, and the only
        # request of the kind its rules let through); a fine-tuned model's cache version
        # before admission is a guess (``prefetch_keys``), which a retrain may have made stale.
        data = self._plain_body(request)
        if data is None or data["model"].startswith("ft:") or data.get("examples"):
            return None
        if not data.get("labels") or rows != len(data["inputs"]):
            return None
        call = {
            "request_id": request._request.request_id,  # type: ignore[attr-defined]
            "tenant_id": self.api_key.tenant_id,
            "api_key_id": self.api_key.pk,
            "livemode": self.api_key.livemode,
            "model": data["model"],
        }
        event = functools.partial(hit_event_parts, call, rows)
        return HitMeter(rows=rows, stream=USAGE_STREAM, event=event, confirm=confirm)

    @extend_schema(
        operation_id="classify",
        request=ClassifyRequestSerializer,
        # (A fuzzer's examples phase sends these: without them no generated call named a
        # model that exists, and none was answered 200.)
        examples=[
            OpenApiExample(
                "Zero-shot",
                request_only=True,
                value={
                    "model": "minilm-l6",
                    "inputs": ["The parcel never arrived"],
                    "labels": ["billing", "delivery", "technical"],
                },
            ),
            OpenApiExample(
                "Few-shot",
                request_only=True,
                value={
                    "model": "minilm-l6",
                    "inputs": ["I was charged twice"],
                    "examples": [
                        {"text": "Refund my order", "label": "billing"},
                        {"text": "The app crashes", "label": "technical"},
                    ],
                },
            ),
        ],
        responses={
            200: ClassificationSerializer,
            413: OpenApiResponse(
                ErrorSerializer, description="An input is over 10,000 characters."
            ),
            503: OpenApiResponse(
                ErrorSerializer, description="Overloaded, or no worker answered in time."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = self._valid_body(request)
        body = classify(
            tenant=self.tenant,
            api_key=self.api_key,
            request_id=request._request.request_id,  # type: ignore[attr-defined]
            model_id=data["model"],
            inputs=data["inputs"],
            labels=data.get("labels"),
            examples=data.get("examples"),
            is_retry=self.is_retry,
            retriable=self.idempotent,
            timings=request._request.server_timing,  # type: ignore[attr-defined]
            admission=self.admission,
        )
        return Response(body)


class ModelListApi(TenantAPIView):
    required_scopes = {"GET": Scope.INFERENCE}
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="models_list",
        parameters=LIST_PARAMETERS,
        responses={200: ModelListSerializer},
    )
    def get(self, request: Request) -> Response:
        page, has_more = paginate(
            model_list_visible(tenant=self.tenant, livemode=self.api_key.livemode),
            query_params=request.query_params,
            cursors=model_list_visible(
                tenant=self.tenant, livemode=self.api_key.livemode, deleted=True
            ),
        )
        return Response(list_body(page, has_more, lambda m: model_to_dict(m, self.tenant)))


class ModelDetailApi(TenantAPIView):
    required_scopes = {"GET": Scope.INFERENCE, "DELETE": Scope.TRAINING}

    @extend_schema(operation_id="models_retrieve", responses={200: ModelSerializer})
    def get(self, request: Request, model_id: str) -> Response:
        model = model_get_visible(
            tenant=self.tenant, model_id=model_id, livemode=self.api_key.livemode, param="id"
        )
        return Response(model_to_dict(model, self.tenant))

    @extend_schema(
        operation_id="models_delete",
        responses={
            200: DeletedSerializer,
            403: OpenApiResponse(
                ErrorSerializer,
                description="The key lacks the training scope, the account is suspended, or"
                " the model is a base model (base_model_not_deletable).",
            ),
        },
    )
    def delete(self, request: Request, model_id: str) -> Response:
        model = model_delete(tenant=self.tenant, model_id=model_id, livemode=self.api_key.livemode)
        return Response({"id": model.id, "object": "model", "deleted": True})

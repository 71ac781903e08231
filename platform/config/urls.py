from django.contrib import admin
from django.urls import path
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from apikeys.apis import ApiKeyDetailApi, ApiKeyListCreateApi, ApiKeyRotateApi
from billing.apis import InvoiceListApi, PlanListApi, SubscriptionApi, UpcomingInvoiceApi
from billing.webhook_views import stripe_webhook
from core.errors import read_only_route
from core.schema import AnyAcceptNegotiation
from datasets.apis import DatasetDetailApi, DatasetListCreateApi
from finetuning.apis import (
    FineTuneCancelApi,
    FineTuneDetailApi,
    FineTuneEventsApi,
    FineTuneListCreateApi,
)
from inference.apis import ClassifyApi, ModelDetailApi, ModelListApi
from metering.apis import UsageApi
from ops import views as ops

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"

v1 = [
    path("v1/classify", ClassifyApi.as_view()),
    path("v1/models", ModelListApi.as_view()),
    path("v1/models/<str:model_id>", ModelDetailApi.as_view()),
    path("v1/api-keys", ApiKeyListCreateApi.as_view()),
    path("v1/api-keys/<str:key_id>", ApiKeyDetailApi.as_view()),
    path("v1/api-keys/<str:key_id>/rotate", ApiKeyRotateApi.as_view()),
    path("v1/usage", UsageApi.as_view()),
    path("v1/plans", PlanListApi.as_view()),
    path("v1/subscription", SubscriptionApi.as_view()),
    path("v1/invoices", InvoiceListApi.as_view()),
    path("v1/invoices/upcoming", UpcomingInvoiceApi.as_view()),
    path("v1/datasets", DatasetListCreateApi.as_view()),
    path("v1/datasets/<str:dataset_id>", DatasetDetailApi.as_view()),
    path("v1/fine-tunes", FineTuneListCreateApi.as_view()),
    path("v1/fine-tunes/<str:job_id>", FineTuneDetailApi.as_view()),
    path("v1/fine-tunes/<str:job_id>/events", FineTuneEventsApi.as_view()),
    path("v1/fine-tunes/<str:job_id>/cancel", FineTuneCancelApi.as_view()),
]

urlpatterns = [
    *v1,
    path(
        "v1/openapi.json",
        read_only_route(
            SpectacularJSONAPIView.as_view(
                authentication_classes=[],
                permission_classes=[],
                content_negotiation_class=AnyAcceptNegotiation,
            )
        ),
        name="openapi",
    ),
    path(
        "v1/docs",
        read_only_route(
            SpectacularSwaggerView.as_view(
                url_name="openapi",
                authentication_classes=[],
                permission_classes=[],
                # (the page whatever Accept says: Accept: application/json was a 406 in HTML)
                content_negotiation_class=AnyAcceptNegotiation,
            )
        ),
    ),
    path(
        "v1/redoc",
        read_only_route(
            SpectacularRedocView.as_view(
                url_name="openapi",
                authentication_classes=[],
                permission_classes=[],
                # (the page whatever Accept says: Accept: application/json was a 406 in HTML)
                content_negotiation_class=AnyAcceptNegotiation,
            )
        ),
    ),
    path("webhooks/stripe", stripe_webhook),
    path("healthz", read_only_route(ops.healthz)),
    path("readyz", read_only_route(ops.readyz)),
    path("metrics", read_only_route(ops.metrics)),
    path("admin/", admin.site.urls),
]

from __future__ import annotations

from typing import Any

from django.db.models import Q
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys.models import Scope
from core.errors import NotFound, PermissionError_
from core.pagination import LIST_PARAMETERS, LIST_QUERY, list_body, parse_cursor, parse_limit
from core.serializers import ErrorSerializer, validated
from core.views import TenantAPIView
from plans.models import Plan

from . import messages
from .invoices import invoices_list, upcoming_invoice
from .models import Subscription
from .serializers import (
    InvoiceListSerializer,
    InvoiceSerializer,
    PlanListSerializer,
    PlanSerializer,
    SubscriptionChangeSerializer,
    SubscriptionSerializer,
    UpcomingInvoiceSerializer,
    invoice_render,
    plan_render,
)
from .subscriptions import (
    subscription_change,
    subscription_get_or_create,
    subscription_payment_blocked,
)

STRIPE_ERRORS = {
    402: OpenApiResponse(
        ErrorSerializer,
        description="The payment method was declined (card_declined), or the subscription"
        " is past due and the new plan is a paid one (subscription_unpaid).",
    ),
    503: OpenApiResponse(ErrorSerializer, description="The payment provider did not answer."),
}


class PlanListApi(TenantAPIView):
    required_scopes = {"GET": Scope.BILLING}
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="plans_list",
        parameters=LIST_PARAMETERS,
        responses={200: PlanListSerializer},
    )
    def get(self, request: Request) -> Response:
        # NOTE: the catalogue is cheapest first, not newest first, and a plan's id is its
        # slug, not its primary key: core.pagination.paginate orders by time and pk, so the
        # cursor is applied here, with its limit parsing, errors and body.
        limit = parse_limit(request.query_params.get("limit"))
        plans = Plan.objects.filter(is_current=True, public=True).order_by("base_fee", "slug")
        cursor_id = parse_cursor(request.query_params)
        if cursor_id is not None:
            cursor = plans.filter(slug=cursor_id).values("base_fee", "slug").first()
            if cursor is None:
                raise NotFound(
                    messages.UNKNOWN_PLAN.format(plan=cursor_id),
                    code="resource_missing",
                    param="starting_after",
                )
            fee = cursor["base_fee"]
            plans = plans.filter(Q(base_fee__gt=fee) | Q(base_fee=fee, slug__gt=cursor["slug"]))
        rows = list(plans[: limit + 1])
        return Response(
            list_body(
                rows[:limit], len(rows) > limit, lambda plan: PlanSerializer(plan_render(plan)).data
            )
        )


def _subscription_body(sub: Subscription) -> dict[str, Any]:
    return dict(
        SubscriptionSerializer(
            {
                "object": "subscription",
                "plan": plan_render(sub.plan),
                "status": sub.status,
                "current_period_start": sub.current_period_start,
                "current_period_end": sub.current_period_end,
                "past_due_since": sub.past_due_since,
                "payment_blocked": subscription_payment_blocked(sub),
            }
        ).data
    )


class SubscriptionApi(TenantAPIView):
    required_scopes = {"*": Scope.BILLING}

    @extend_schema(operation_id="subscription_retrieve", responses={200: SubscriptionSerializer})
    def get(self, request: Request) -> Response:
        return Response(_subscription_body(subscription_get_or_create(tenant=self.tenant)))

    @extend_schema(
        operation_id="subscription_update",
        request=SubscriptionChangeSerializer,
        examples=[OpenApiExample("Move to free", request_only=True, value={"plan": "free"})],
        responses={200: SubscriptionSerializer, **STRIPE_ERRORS},
    )
    def post(self, request: Request) -> Response:
        data = validated(SubscriptionChangeSerializer, request.data)
        if not self.api_key.livemode:  # a plan change is billed: live keys only
            raise PermissionError_(messages.TEST_CHANGES_PLAN, code="livemode_required")
        sub = subscription_change(tenant=self.tenant, plan_slug=data["plan"])
        return Response(_subscription_body(sub))


class InvoiceListApi(TenantAPIView):
    required_scopes = {"GET": Scope.BILLING}
    query_parameters = {"GET": LIST_QUERY}

    @extend_schema(
        operation_id="invoices_list",
        description="The tenant's invoices, newest first. Test mode is never billed: a"
        " test-mode key lists none.",
        parameters=LIST_PARAMETERS,
        responses={200: InvoiceListSerializer},
    )
    def get(self, request: Request) -> Response:
        page, has_more = invoices_list(
            tenant=self.tenant, livemode=self.api_key.livemode, query_params=request.query_params
        )
        return Response(
            list_body(page, has_more, lambda inv: InvoiceSerializer(invoice_render(inv)).data)
        )


class UpcomingInvoiceApi(TenantAPIView):
    required_scopes = {"GET": Scope.BILLING}

    @extend_schema(
        operation_id="invoices_upcoming",
        description="The current period's invoice so far. For a test-mode key (never billed)"
        " it has no lines and totals 0.",
        responses={200: UpcomingInvoiceSerializer, 503: STRIPE_ERRORS[503]},
    )
    def get(self, request: Request) -> Response:
        upcoming = upcoming_invoice(tenant=self.tenant, livemode=self.api_key.livemode)
        body = {
            "object": "upcoming_invoice",
            "plan": upcoming.plan,
            "currency": upcoming.currency,
            "period_start": upcoming.period_start,
            "period_end": upcoming.period_end,
            "lines": upcoming.lines,
            "subtotal": upcoming.total,
            "total": upcoming.total,
            "amount_due": max(upcoming.total, 0),
        }
        return Response(UpcomingInvoiceSerializer(body).data)

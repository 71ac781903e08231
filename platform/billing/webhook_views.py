"""``POST /webhooks/stripe``: a plain Django view, not DRF: the signature covers the raw
bytes, which must reach the verifier untouched by any parser, and Stripe carries no API key.
"""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from core.errors import error_body

from .webhooks import WebhookRejected, stripe_event_record, stripe_event_verify

logger = logging.getLogger(__name__)


def _enqueue(event_id: str) -> None:
    from .tasks import stripe_event_process_task

    try:
        stripe_event_process_task.apply_async(args=[event_id])
    except Exception:
        # The event is stored; the periodic sweep processes what was never enqueued.
        logger.exception("could not enqueue Stripe event %s; the sweep will pick it up", event_id)


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        body = error_body(405, "method_not_allowed", "Stripe events are POSTed.")
        return JsonResponse(body, status=405, headers={"Allow": "POST"})
    try:
        payload = request.body
    except RequestDataTooBig:
        # Stripe's events are a few kB; the request limit is far above any.
        body = error_body(413, "request_too_large", "The event is larger than this server takes.")
        return JsonResponse(body, status=413)
    try:
        event = stripe_event_verify(
            payload=payload, signature=request.headers.get("Stripe-Signature")
        )
    except WebhookRejected as exc:
        # (No secret configured is the operator's to fix: logged as an error, not a refusal.)
        level = logging.ERROR if exc.code == "webhook_not_configured" else logging.WARNING
        logger.log(level, "Stripe webhook rejected: %s", exc.code)
        # NOTE: a 401 names its scheme (RFC 9110): the signature is the credential here.
        challenge = {"WWW-Authenticate": 'Stripe-Signature realm="webhooks"'}
        return JsonResponse(
            error_body(exc.status, exc.code, exc.message),
            status=exc.status,
            headers=challenge if exc.status == 401 else None,
        )
    if not stripe_event_record(event=event):
        return JsonResponse({"received": True, "duplicate": True})
    transaction.on_commit(lambda: _enqueue(event["id"]))
    return JsonResponse({"received": True})

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
from core.middleware import anonymous_body_read

from .webhooks import (
    WebhookRejected,
    stripe_credentials_check,
    stripe_event_record,
    stripe_event_verify,
)

logger = logging.getLogger(__name__)


def _enqueue(event_id: str) -> None:
    from .tasks import stripe_event_process_task

    try:
        stripe_event_process_task.apply_async(args=[event_id])
    except Exception:
        # The event is stored; the periodic sweep processes what was never enqueued.
        logger.exception("could not enqueue Stripe event %s; the sweep will pick it up", event_id)


# The largest event taken: Stripe's are a few kB. NOTE: anyone can POST here (the signature
# is checked once the body is in): 40 connections that sent headers and a byte of body held
# every request thread of `make run`'s two processes, and no call, probe or tenant was
# answered while they stayed open (a security audit). The body is now read in one of the
# few places a process gives keyless bodies (``core.middleware``); with none free, the
# delivery is a 429 (Stripe retries it) and the other threads stay free.
WEBHOOK_MAX_BYTES = 1024 * 1024
BUSY = "Too many requests without a key are sending their bodies to this server; retry."


def _payload(request: HttpRequest) -> bytes | JsonResponse:
    """The request's body, read in a keyless reader's place; or the refusal."""
    too_large = error_body(413, "request_too_large", "The event is larger than this server takes.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > WEBHOOK_MAX_BYTES:
        return JsonResponse(too_large, status=413)
    with anonymous_body_read() as placed:
        if not placed:
            body = error_body(429, "concurrency_limited", BUSY)
            return JsonResponse(body, status=429, headers={"Retry-After": "1"})
        try:
            return request.body
        except RequestDataTooBig:
            return JsonResponse(too_large, status=413)


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        body = error_body(405, "method_not_allowed", "Stripe events are POSTed.")
        return JsonResponse(body, status=405, headers={"Allow": "POST"})
    signature = request.headers.get("Stripe-Signature")
    try:
        stripe_credentials_check(signature)  # before the body: it needs no key to send one
        payload = _payload(request)
        if isinstance(payload, JsonResponse):
            return payload
        event = stripe_event_verify(payload=payload, signature=signature)
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

"""Stripe webhook events: verified on the raw body, stored once (the event id is the
primary key), processed later in a Celery task.

Processing is idempotent and order-blind: every handler re-reads the object from Stripe
and makes the local state follow it, so a duplicate, a late or a shuffled delivery ends in
the same state as an orderly one. The event's own snapshot is only a fallback for objects
Stripe no longer has."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import messages
from .models import Invoice, StripeEvent, Subscription
from .stripe_client import (
    as_dict,
    as_microseconds,
    is_missing,
    stripe_api,
    stripe_moment,
    subscription_of,
)
from .subscriptions import subscription_refresh_from_stripe
from .unpaid import past_due_clear

logger = logging.getLogger(__name__)
# 9999-12-31T23:59:59Z: the last second a datetime can hold.
MAX_CREATED = 253402300799


class WebhookRejected(Exception):
    """``status``: 401 for a request no configured secret signed (the signature is a
    webhook's only credential; with no secret configured, none is: Stripe retries, and the
    events land once one is), 400 for a signed body that is no Stripe event."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def stripe_credentials_check(signature: str | None) -> None:
    """What refuses a delivery before its body is read: no signature, or no secret to check
    one with."""
    if not signature:
        raise WebhookRejected("missing_signature", messages.WEBHOOK_NO_SIGNATURE, 401)
    if not settings.STRIPE_WEBHOOK_SECRETS:
        raise WebhookRejected("webhook_not_configured", messages.WEBHOOK_NOT_CONFIGURED, 401)


def stripe_event_verify(*, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, if one of the configured secrets signed exactly these bytes within the
    tolerance. Two secrets are tried while one is being rotated."""
    stripe_credentials_check(signature)
    secrets = settings.STRIPE_WEBHOOK_SECRETS
    try:
        payload.decode()
    except UnicodeDecodeError:
        # Stripe signs UTF-8 JSON: other bytes carry no good signature (the library's decode
        # failed as a ValueError, answered 400 invalid_payload, before any check).
        raise WebhookRejected("invalid_signature", messages.WEBHOOK_BAD_SIGNATURE, 401) from None
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(
                payload, signature, secret, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_S
            )
        except stripe.SignatureVerificationError:
            continue
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
            # Signed, but not a JSON event object: the library trips building the event.
            raise WebhookRejected("invalid_payload", messages.WEBHOOK_BAD_PAYLOAD) from None
        break
    else:
        raise WebhookRejected("invalid_signature", messages.WEBHOOK_BAD_SIGNATURE, 401)
    event = json.loads(payload)
    try:
        # What the database stores must be JSON it can write: no NaN or Infinity (which
        # Python's json reads), no lone surrogate ("\ud800", which no UTF-8 can hold).
        json.dumps(event, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:  # UnicodeEncodeError is one
        raise WebhookRejected("invalid_payload", messages.WEBHOOK_BAD_PAYLOAD) from None
    data = event.get("data") if isinstance(event, dict) else None
    if not (
        isinstance(data, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        # StripeEvent's columns (Stripe's own ids and types are far shorter).
        and 0 < len(event["id"]) <= 100
        and 0 < len(event["type"]) <= 100
        and isinstance(data.get("object"), dict)
        # What every handler reads: the object's id, and the event's time (unix seconds).
        # Signed but without them, an event would fail its handler on every retry.
        and isinstance(data["object"].get("id"), str)
        and 0 < len(data["object"]["id"]) <= 255
        and type(event.get("created")) is int
        # A time the handlers can turn into a datetime: one past year 9999 (a signed
        # ``created`` of 10**12) was stored and failed its handler on every retry.
        and 0 <= event["created"] <= MAX_CREATED
        # NOTE: PostgreSQL's jsonb cannot store NUL; Stripe never sends one.
        and b"\\u0000" not in payload
    ):
        raise WebhookRejected("invalid_payload", messages.WEBHOOK_BAD_PAYLOAD)
    return event


def stripe_event_record(*, event: dict[str, Any]) -> bool:
    """Store the event once; False when it was already stored (a redelivery)."""
    try:
        with transaction.atomic():
            StripeEvent.objects.create(id=event["id"], type=event["type"], payload=event)
    except IntegrityError:
        if StripeEvent.objects.filter(pk=event["id"]).exists():
            return False
        raise  # not stored, and not a redelivery: never answered as one (Stripe retries a 500)
    return True


# A finalised invoice's statuses: what GET /v1/invoices lists.
FINALISED = frozenset({"open", "paid", "void", "uncollectible"})


# An invoice's statuses that Stripe never moves it out of.
SETTLED = frozenset({"paid", "void"})


def _mirror_invoice(
    invoice: dict[str, Any], tenant_id: str, observed_at: int, *, again: bool = False
) -> None:
    """Mirror a re-read of a finalised invoice, read from ``observed_at`` on (unix
    microseconds, ``stripe_moment``), unless the mirror holds a read begun later, or the
    invoice settled already (paid or void: a read from before then is stale, whatever its
    stamp). Checked and written under the row's lock: two handlers of one invoice (its
    payment failed, then it was paid) ran side by side, and the older read, written last,
    showed a paid invoice open again, keeping its tenant off paid plans. A first mirror is
    a plain insert: one that a concurrent first mirror beat goes back through the locked
    check (``update_or_create`` took the unique key's error for "it exists" and wrote over
    the row unchecked)."""
    if invoice.get("status") not in FINALISED or not invoice.get("id"):
        return  # only finalised invoices are mirrored
    fields = _invoice_fields(invoice, observed_at)
    with transaction.atomic():
        existing = (
            Invoice.objects.for_tenant(tenant_id).select_for_update().filter(pk=invoice["id"])
        ).first()
        if existing is not None:
            stamp = as_microseconds(existing.stripe_updated_at)
            if stamp >= observed_at or (
                existing.status in SETTLED and invoice.get("status") != existing.status
            ):
                return
            Invoice.objects.for_tenant(tenant_id).filter(pk=existing.pk).update(**fields)
            return
        try:
            with transaction.atomic():  # (a savepoint: a concurrent first mirror may win)
                Invoice.objects.create(id=invoice["id"], tenant_id=tenant_id, **fields)
            return
        except IntegrityError:
            if again:
                raise  # (not that race: an id stored under another tenant)
    _mirror_invoice(invoice, tenant_id, observed_at, again=True)  # it exists now: locked


def _invoice_fields(invoice: dict[str, Any], observed_at: int) -> dict[str, Any]:
    def at(seconds: Any) -> datetime | None:
        return datetime.fromtimestamp(int(seconds), tz=UTC) if seconds else None

    return {
        "number": invoice.get("number") or "",
        "status": invoice.get("status") or "",
        "currency": invoice.get("currency") or "",
        "amount_due": int(invoice.get("amount_due") or 0),
        "amount_paid": int(invoice.get("amount_paid") or 0),
        "total": int(invoice.get("total") or 0),
        "period_start": at(invoice.get("period_start")),
        "period_end": at(invoice.get("period_end")),
        "hosted_invoice_url": invoice.get("hosted_invoice_url") or "",
        "created_at": at(invoice.get("created")) or timezone.now(),
        "stripe_updated_at": observed_at,
    }


def handle_subscription(snapshot: dict[str, Any], created: int) -> None:
    subscription_refresh_from_stripe(
        customer_id=str(snapshot.get("customer") or ""),
        stripe_subscription_id=str(snapshot["id"]),
        snapshot=snapshot,
        event_created=created,
    )


def handle_invoice(snapshot: dict[str, Any], created: int) -> None:
    customer_id = str(snapshot.get("customer") or "")
    if not customer_id:
        return
    # NOTE: unscoped on purpose: the customer id is how a webhook finds its tenant.
    row = Subscription.objects.unscoped().filter(stripe_customer_id=customer_id).first()
    if row is None:
        return
    observed_at = stripe_moment()  # (before the read: see stripe_moment)
    try:
        current = as_dict(stripe_api().Invoice.retrieve(snapshot["id"]))
    except stripe.StripeError as exc:
        if not is_missing(exc):
            raise
        # A finalised invoice is never deleted at Stripe: one it does not have is a deleted
        # draft, or never was. Nothing to list.
        logger.info("invoice %s of an event is not at Stripe: ignored", snapshot["id"])
        return
    _mirror_invoice(current, row.tenant_id, observed_at)
    subscription_id = subscription_of(current)
    if subscription_id:
        # Paid or failed, the subscription's status in Stripe is what changed.
        subscription_refresh_from_stripe(
            customer_id=customer_id,
            stripe_subscription_id=subscription_id,
            snapshot={"id": subscription_id, "customer": customer_id},
            event_created=0,
        )
    past_due_clear(tenant_id=row.tenant_id)


HANDLERS: dict[str, Callable[[dict[str, Any], int], None]] = {
    "customer.subscription.created": handle_subscription,
    "customer.subscription.updated": handle_subscription,
    "customer.subscription.deleted": handle_subscription,
    "invoice.finalized": handle_invoice,
    "invoice.paid": handle_invoice,
    "invoice.payment_succeeded": handle_invoice,
    "invoice.payment_failed": handle_invoice,
    # An invoice voided (a declined first payment's) or written off: the mirror must leave
    # "open", or an open invoice keeps the tenant off paid plans for good.
    "invoice.voided": handle_invoice,
    "invoice.marked_uncollectible": handle_invoice,
}


def stripe_event_process(*, event_id: str) -> bool:
    """Run the event's handler once. Returns False if it was already processed. Raises on
    Stripe trouble, after noting the error, so the task retries."""
    event = StripeEvent.objects.filter(pk=event_id).first()
    if event is None or event.processed_at is not None:
        return False
    handler = HANDLERS.get(event.type)
    try:
        if handler is not None:
            payload = event.payload
            handler(dict(payload["data"]["object"]), int(payload.get("created") or 0))
    except Exception as exc:
        StripeEvent.objects.filter(pk=event_id).update(error=f"{type(exc).__name__}: {exc}")
        raise
    # Handlers converge on Stripe's state, so running one twice (two workers racing past
    # the check above) is harmless; the flag only saves the work.
    StripeEvent.objects.filter(pk=event_id).update(processed_at=timezone.now(), error="")
    return True

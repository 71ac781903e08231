"""Billing's Celery tasks, run by the platform worker (``manage.py platform_worker``) on
the ``platform`` queue (routed in config/celery.py). Thin wrappers: ids and plain data in,
one service call each. Retry and ack policy is set once, in TASK_OPTIONS."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import stripe
from django.db import transaction
from django.utils import timezone

from config.celery import app
from tenants.models import Tenant

from .invoicing import usage_charges_push
from .models import StripeEvent, Subscription
from .reconciliation import reconciliation_run
from .webhooks import stripe_event_process

logger = logging.getLogger(__name__)

TASK_OPTIONS: dict[str, Any] = {
    # Acknowledged after the work: a worker that dies mid-task leaves it for another. Every
    # task here is idempotent, so running one twice is harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # Stripe or the network hiccups: retry with backoff (up to ~10 minutes).
    "autoretry_for": (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "max_retries": 8,
}
SWEEP_AGE = timedelta(minutes=1)
# Stripe itself stops redelivering after three days; so do we.
SWEEP_HORIZON = timedelta(days=3)


@app.task(name="billing.stripe_event_process", **TASK_OPTIONS)
def stripe_event_process_task(event_id: str) -> bool:
    return stripe_event_process(event_id=event_id)


@app.task(name="billing.stripe_events_sweep", **TASK_OPTIONS)
def stripe_events_sweep_task() -> int:
    """Events stored but never processed (a lost enqueue, retries exhausted)."""
    now = timezone.now()
    stale = StripeEvent.objects.filter(
        processed_at__isnull=True,
        received_at__lt=now - SWEEP_AGE,
        received_at__gt=now - SWEEP_HORIZON,
    ).values_list("id", flat=True)[:500]
    for event_id in stale:
        stripe_event_process_task.apply_async(args=[event_id])
    return len(stale)


@app.task(name="billing.usage_push", **TASK_OPTIONS)
def usage_push_task(tenant_id: str, start: str | None = None, end: str | None = None) -> int:
    tenant = Tenant.objects.get(pk=tenant_id)
    pushes = usage_charges_push(
        tenant=tenant,
        start=datetime.fromisoformat(start) if start else None,
        end=datetime.fromisoformat(end) if end else None,
    )
    return len(pushes)


def usage_push_period_enqueue(*, tenant_id: str, start: datetime, end: datetime) -> None:
    """Push a closed period's last usage once the current transaction commits."""
    transaction.on_commit(
        lambda: usage_push_task.apply_async(args=[tenant_id, start.isoformat(), end.isoformat()])
    )


def _tenants_on_stripe() -> list[str]:
    # NOTE: unscoped on purpose: an operator's job over every tenant.
    return list(
        Subscription.objects.unscoped()
        .exclude(stripe_subscription_id="")
        .values_list("tenant_id", flat=True)
    )


@app.task(name="billing.usage_push_all", **TASK_OPTIONS)
def usage_push_all_task() -> int:
    """Beat: push every paid subscription's current period so far."""
    tenant_ids = _tenants_on_stripe()
    for tenant_id in tenant_ids:
        usage_push_task.apply_async(args=[tenant_id])
    return len(tenant_ids)


@app.task(name="billing.reconcile_all", **TASK_OPTIONS)
def reconcile_all_task() -> int:
    """Beat: push and then reconcile every paid subscription's period at one cut, so the
    check compares like with like (usage recorded after the cut is in neither)."""
    tenant_ids = _tenants_on_stripe()
    for tenant_id in tenant_ids:
        usage_push_and_reconcile_task.apply_async(args=[tenant_id])
    return len(tenant_ids)


@app.task(name="billing.usage_push_and_reconcile", **TASK_OPTIONS)
def usage_push_and_reconcile_task(tenant_id: str) -> int | None:
    tenant = Tenant.objects.get(pk=tenant_id)
    cut = timezone.now()
    usage_charges_push(tenant=tenant, until=cut)
    row = reconciliation_run(tenant=tenant, until=cut)
    return row.difference if row else None

"""Billing's Celery tasks, run by the platform worker (``manage.py platform_worker``) on
the ``platform`` queue (routed in config/celery.py). Thin wrappers: ids and plain data in,
one service call each. Retry and ack policy is set once, in TASK_OPTIONS."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import redis
import stripe
from django.db import transaction
from django.utils import timezone

from config.celery import app
from tenants.models import Tenant

from .invoicing import PushInProgress, usage_charges_push
from .models import BillingPeriod, StripeEvent, Subscription
from .periods import LATE_USAGE_HORIZON
from .reconciliation import reconciliation_run
from .reread import subscription_reread
from .subscriptions import subscription_get_or_create
from .unpaid import past_due_clear
from .webhooks import stripe_event_process

logger = logging.getLogger(__name__)

TASK_OPTIONS: dict[str, Any] = {
    # Acknowledged after the work: a worker that dies mid-task leaves it for another. Every
    # task here is idempotent, so running one twice is harmless.
    "acks_late": True,
    "reject_on_worker_lost": True,
    # Stripe or the network hiccups: retry with backoff (up to ~10 minutes).
    # So do a usage push that another still holds the tenant's lock for, and Redis.
    "autoretry_for": (
        stripe.APIConnectionError,
        stripe.RateLimitError,
        stripe.APIError,
        PushInProgress,
        redis.RedisError,
    ),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "max_retries": 8,
}
SWEEP_AGE = timedelta(minutes=1)
# Stripe itself stops redelivering after three days; so do we.
SWEEP_HORIZON = timedelta(days=3)
# A closed period is pushed again each hour for LATE_USAGE_HORIZON (usage that reached the
# ledger after its last push: a consumer outage of up to a week still gets billed) ...
# ... and reconciled whole by each daily run for as long, and a day more: a late push on the
# period's last day of pushes is checked too (the check stopped after 2 days, the pushes ran
# for 7: what they sent after the second day went unchecked).
RECONCILE_CLOSED_WITHIN = LATE_USAGE_HORIZON + timedelta(days=1)


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


def usage_push_period_enqueue(
    *, tenant_id: str, start: datetime | None = None, end: datetime | None = None
) -> None:
    """Push the period [start, end) (default: the tenant's current one) once the current
    transaction commits: a closed period's last usage, a ledger correction's credit. robust:
    with the broker down, the change is not failed after its commit (a move to free answered
    500, its Stripe subscription left); the hourly push sends it."""
    transaction.on_commit(lambda: _enqueue(usage_push_task, tenant_id, start, end), robust=True)


def _tenants_on_stripe() -> list[str]:
    """Tenants with a Stripe customer (a paid plan now or before): one on free now may
    still owe for usage its paid plan admitted (a fine-tune that finished after the move)."""
    # NOTE: unscoped on purpose: an operator's job over every tenant.
    return list(
        Subscription.objects.unscoped()
        .exclude(stripe_customer_id="")
        .values_list("tenant_id", flat=True)
    )


def _periods_closed_since(since: datetime) -> list[tuple[str, datetime, datetime]]:
    """Periods that ended after ``since`` of tenants that have a Stripe customer (a paid
    plan now or before): their last usage may have reached the ledger after their push."""
    # NOTE: unscoped on purpose: an operator's job over every tenant.
    customers = Subscription.objects.unscoped().exclude(stripe_customer_id="")
    periods = BillingPeriod.objects.unscoped().filter(
        end__gt=since,
        end__lte=timezone.now(),
        tenant_id__in=customers.values("tenant_id"),
        # (free's too: usage made on a paid plan can land in one, see usage_charges_push)
    )
    return list(periods.values_list("tenant_id", "start", "end"))


def _enqueue(
    task: Any, tenant_id: str, start: datetime | None = None, end: datetime | None = None
) -> None:
    """``task`` for the tenant's current period, or for the period [start, end)."""
    args = [tenant_id] + ([start.isoformat(), end.isoformat()] if start and end else [])
    task.apply_async(args=args)


@app.task(name="billing.usage_push_all", **TASK_OPTIONS)
def usage_push_all_task() -> int:
    """Beat: push every paid subscription's current period so far, and what has reached the
    ledger since the last push of a period closed within LATE_USAGE_HORIZON."""
    tenant_ids = _tenants_on_stripe()
    for tenant_id in tenant_ids:
        _enqueue(usage_push_task, tenant_id)
    closed = _periods_closed_since(timezone.now() - LATE_USAGE_HORIZON)
    for tenant_id, start, end in closed:
        _enqueue(usage_push_task, tenant_id, start, end)
    return len(tenant_ids) + len(closed)


@app.task(name="billing.reconcile_all", **TASK_OPTIONS)
def reconcile_all_task() -> int:
    """Beat (daily): push and then reconcile every paid subscription's period at one cut, so
    the check compares like with like (usage recorded after the cut is in neither); and
    every period closed within RECONCILE_CLOSED_WITHIN, whole, so that usage which reached
    the ledger after a period's last push cannot go unbilled unseen."""
    tenant_ids = _tenants_on_stripe()
    for tenant_id in tenant_ids:
        _enqueue(usage_push_and_reconcile_task, tenant_id)
    closed = _periods_closed_since(timezone.now() - RECONCILE_CLOSED_WITHIN)
    for tenant_id, start, end in closed:
        _enqueue(usage_push_and_reconcile_task, tenant_id, start, end)
    return len(tenant_ids) + len(closed)


@app.task(name="billing.usage_push_and_reconcile", **TASK_OPTIONS)
def usage_push_and_reconcile_task(
    tenant_id: str, start: str | None = None, end: str | None = None
) -> int | None:
    tenant = Tenant.objects.get(pk=tenant_id)
    if start is None:
        # (Refused by Stripe: logged, and the push and check still run.)
        subscription_reread(subscription_get_or_create(tenant=tenant))
        past_due_clear(tenant_id=tenant.pk)  # on free with nothing owed any more
    cut = timezone.now()
    began = datetime.fromisoformat(start) if start else None
    ends = datetime.fromisoformat(end) if end else None
    usage_charges_push(tenant=tenant, start=began, end=ends, until=cut)
    row = reconciliation_run(tenant=tenant, start=began, until=cut)
    return row.difference if row else None

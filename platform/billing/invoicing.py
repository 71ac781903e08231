"""Usage charges to Stripe (the invoices customers see are read in ``invoices``).

The rating engine prices the ledger; each usage line of a period goes to Stripe as an
invoice item on the subscription's upcoming invoice. A push is recorded here first (the
idempotency key tenant + period + line is unique) and the same key is sent to Stripe, so a
retry never bills twice. Growth is pushed as a new item (``…:usage:standard:2``), never by
editing one Stripe already holds; so is a line that shrank (a ledger correction voided some
of its usage, a plan change gave its plan more included inputs): the difference as a
negative item, a credit, under the line's next key."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any

import redis
import stripe
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.utils import timezone
from redis.exceptions import LockError

from limits.services import redis_client
from tenants.models import Tenant

from .locks import lock_held
from .models import Subscription, UsageChargePush
from .periods import billed_currency, period_recorded
from .rating import ChargeLine, rate_tenant_period
from .stripe_client import as_dict, stripe_api, stripe_configured
from .subscriptions import subscription_get_or_create

logger = logging.getLogger(__name__)
# One usage push per tenant at a time: the lock's timeout (renewed while a push runs) and
# how long another waits for it.
PUSH_LOCK_S = 60
PUSH_WAIT_S = 60


def period_key(start: datetime) -> str:
    return f"{start:%Y%m%dT%H%M%SZ}"


def push_key(*, tenant_id: str, start: datetime, line: str, sequence: int) -> str:
    base = f"usage-{tenant_id}-{period_key(start)}-{line}"
    return base if sequence == 1 else f"{base}:{sequence}"


def _pushed(tenant: Tenant, start: datetime, line: str) -> tuple[int, int]:
    """What the line's pushes add up to, and how many there are, read in ONE query (one
    snapshot): a push made by a concurrent run between two reads would pair its growth with
    the next sequence number and bill that growth twice; read together, a concurrent run's
    push takes the same sequence number, and the unique key refuses the second."""
    rows = UsageChargePush.objects.for_tenant(tenant).filter(period_start=start, line=line)
    pushed = rows.aggregate(total=Sum("amount"), count=Count("id"))
    return int(pushed["total"] or 0), int(pushed["count"])


def _pushed_lines(tenant: Tenant, start: datetime) -> set[str]:
    """The lines of the period pushed so far."""
    rows = UsageChargePush.objects.for_tenant(tenant).filter(period_start=start)
    return set(rows.values_list("line", flat=True).distinct())


def _find_in_stripe(api: Any, customer_id: str, key: str) -> str | None:
    """A push that may have reached Stripe before we crashed: look for its key."""
    for item in api.InvoiceItem.list(customer=customer_id, limit=100).auto_paging_iter():
        if (as_dict(item).get("metadata") or {}).get("idempotency_key") == key:
            return str(item.id)
    return None


def _send(api: Any, push: UsageChargePush, sub: Subscription, *, in_doubt: bool) -> None:
    """One push to Stripe: an invoice item on the live subscription's next invoice, or,
    where the subscription has ended, a pending item on the customer (invoiced below)."""
    item_id = (
        _find_in_stripe(api, sub.stripe_customer_id, push.idempotency_key) if in_doubt else None
    )
    if item_id is None:
        on_subscription = (
            {"subscription": sub.stripe_subscription_id} if sub.stripe_subscription_id else {}
        )
        item = api.InvoiceItem.create(
            customer=sub.stripe_customer_id,
            **on_subscription,
            amount=push.amount,
            currency=push.currency,
            description=push.description,
            metadata={
                "tenant_id": push.tenant_id,
                "period_start": str(int(push.period_start.timestamp())),
                "period_end": str(int(push.period_end.timestamp())),
                "line": push.line,
                "idempotency_key": push.idempotency_key,
            },
            idempotency_key=push.idempotency_key,
        )
        item_id = item.id
    push.stripe_invoice_item_id = str(item_id)
    push.pushed_at = timezone.now()
    push.awaiting_invoice = not sub.stripe_subscription_id
    push.save(update_fields=["stripe_invoice_item_id", "pushed_at", "awaiting_invoice"])


def _invoice_ended_subscription(api: Any, sub: Subscription, pushes: list[UsageChargePush]) -> None:
    """Usage of a period whose subscription has ended (moved to free, cancelled in Stripe)
    that reached the ledger after its final invoice: no subscription invoice will ever take
    its items, so they go on an invoice of their own, collected now. Keyed by the last push,
    so a retry never invoices twice; the pushes wait for it (``awaiting_invoice``) until
    Stripe has made it, and every push of the tenant asks again. Should Stripe refuse, the
    items stay pending on the customer (the customer's next invoice takes them)."""
    last = max(pushes, key=lambda push: push.pk)
    if (total := sum(push.amount for push in pushes)) <= 0:
        # Credits (a plan change gave a plan more of the period after its usage was billed):
        # an invoice of a negative total would be asked for at every push. They stay on the
        # customer, for its next invoice to take, and a person is told.
        logger.warning(
            "credit of %s %s for %s left on Stripe customer %s (its subscription has ended)",
            -total, last.currency, sub.tenant_id,
            sub.stripe_customer_id,
        )  # fmt: skip
        ids = [push.pk for push in pushes]
        UsageChargePush.objects.for_tenant(sub.tenant_id).filter(pk__in=ids).update(
            awaiting_invoice=False
        )
        return
    try:
        invoice = api.Invoice.create(
            customer=sub.stripe_customer_id,
            pending_invoice_items_behavior="include",
            description="Usage recorded after your subscription's final invoice",
            metadata={"tenant_id": last.tenant_id, "late_usage": last.idempotency_key},
            idempotency_key=f"late-invoice-{last.idempotency_key}",
        )
        api.Invoice.pay(invoice.id, idempotency_key=f"late-pay-{last.idempotency_key}")
    except stripe.CardError as exc:
        # Finalised and owed: the invoice is open and its webhooks mirror it.
        logger.warning("late usage invoice for %s not paid: %s", sub.tenant_id, exc)
    except stripe.InvalidRequestError as exc:
        logger.error(
            "late usage of %s left pending on Stripe customer %s (no invoice: %s)",
            sub.tenant_id, sub.stripe_customer_id, exc,
        )  # fmt: skip
        return
    # (Network and rate errors raise before this: the task retries, and asks again.)
    invoiced = [push.pk for push in pushes]
    UsageChargePush.objects.for_tenant(sub.tenant_id).filter(pk__in=invoiced).update(
        awaiting_invoice=False
    )


# The text of a line that shrank to nothing (its credit item's), by line.
_LINE_GONE = "Usage past the included inputs: none now"
_FINETUNE_GONE = "Fine-tuning: none now"


def _growth(description: str, already: int, amount: int | None = None) -> str:
    """An item after the first of a line bills what the line grew by (or credits what it
    shrank by): its text says the line's total is to date and what was billed before (a
    second item read '7 inputs over the included 10' beside the first's '5 inputs', for the
    2 inputs it billed)."""
    if not already:
        return description
    if amount is not None and amount < already:
        return (
            f"Credit: {description}, to date; {already:,} of its amount billed in earlier "
            "items (usage corrected, or a plan change gave its plan more of the period's "
            "included inputs)"
        )
    return f"{description}, to date; {already:,} of its amount billed in earlier items"


class PushInProgress(Exception):
    """Another push of the tenant's usage ran longer than ``PUSH_WAIT_S``: try later."""


def usage_charges_push(
    *,
    tenant: Tenant,
    start: datetime | None = None,
    end: datetime | None = None,
    until: datetime | None = None,
    wait_s: float | None = None,
) -> list[UsageChargePush]:
    """Push what the ledger says for the period (default: the current one) up to ``until``
    (default: now) and Stripe does not hold yet. Returns the pushes made by this call.

    One push at a time per tenant (a Redis lock, renewed while it runs): two at once each
    sent the record the other had just made (the loser of the insert found it pending,
    and looked it up in Stripe before the winner's item existed), and only Stripe's
    idempotency key stood between them and a double charge: 175 EUR billed for 95 in the
    ledger against an emulator without one. ``PushInProgress`` after ``wait_s`` (default
    ``PUSH_WAIT_S``; 0: not at all).

    A closed period is pushed again whenever its rated usage has grown since: an event
    that reached the ledger after the renewal's push (consumer lag, an outage), or calls
    answered after a move to free or a cancellation in Stripe. Its items go on the live
    subscription's next invoice, or, with none, on an invoice of their own."""
    lock = redis_client().lock(
        f"usage-push:{tenant.pk}",
        timeout=PUSH_LOCK_S,
        blocking_timeout=PUSH_WAIT_S if wait_s is None else wait_s,
        thread_local=False,  # renewed by lock_held's thread
    )
    if not lock.acquire():
        raise PushInProgress(f"another usage push of {tenant.pk} is still running")
    try:
        with lock_held(lock):
            return _push_locked(tenant, start, end, until)
    finally:
        with contextlib.suppress(redis.RedisError, LockError):
            lock.release()


def _push_locked(
    tenant: Tenant, start: datetime | None, end: datetime | None, until: datetime | None
) -> list[UsageChargePush]:
    sub = subscription_get_or_create(tenant=tenant)
    if not sub.stripe_customer_id or not stripe_configured():
        return []  # never on a paid plan: nothing to bill in Stripe
    start = start or sub.current_period_start
    end = end or sub.current_period_end
    current = start == sub.current_period_start
    # NOTE: a period on free is rated too: its own usage charges nothing, but usage made on
    # a paid plan can land in it (a fine-tune the paid plan admitted, finished after the
    # move to free: "billed on the plan that admitted it"), and was never billed.
    cut = min(end, until or timezone.now())
    _, plan = period_recorded(tenant=tenant, sub=sub, start=start)
    # From the ledger itself (DESIGN: reported to Stripe = the sum of the ledger), not its
    # rollups as the reports read it: rollups that drifted (a restore without a rebuild, a
    # release whose rollups predate a fix) never reach an invoice. A background job's read.
    rated = rate_tenant_period(tenant=tenant, plan=plan, start=start, end=cut,
                               include_base_fee=False, from_ledger=True)  # fmt: skip
    # A period on free is priced in free's currency, but what it charges was admitted on
    # a paid plan: the account's billed currency (EUR cents went to Stripe labelled USD).
    currency = rated.currency if plan.base_fee else billed_currency(tenant=tenant) or rated.currency
    # A closed period's items land on a later invoice: each says which period it bills.
    of_period = "" if current else f" (usage of {start:%Y-%m-%d} to {end:%Y-%m-%d})"
    api = stripe_api()
    made: list[UsageChargePush] = []
    rated_lines = {line.key: line for line in rated.lines}
    for key in _pushed_lines(tenant, start) - set(rated_lines):  # shrunk to nothing
        rated_lines[key] = ChargeLine(
            key, _FINETUNE_GONE if key == "finetune" else _LINE_GONE, 0, 0
        )
    for line in rated_lines.values():
        already, count = _pushed(tenant, start, line.key)
        if line.amount == already:
            continue
        # NOTE: a line shrinks where a later plan change gave its plan more of the period
        # (back on a plan: more time on it, more of its included inputs), or where a ledger
        # correction voided some of its usage (metering.corrections): the difference goes
        # back as a credit item, a new line as growth is, so Stripe holds what the ledger
        # rates (a shrunk line was kept in Stripe at its highest).
        try:
            with transaction.atomic():
                push = UsageChargePush.objects.create(
                    idempotency_key=push_key(
                        tenant_id=tenant.id, start=start, line=line.key, sequence=count + 1
                    ),
                    tenant=tenant, period_start=start, period_end=end, line=line.key,
                    description=_growth(line.description, already, line.amount)[
                        : 300 - len(of_period)
                    ]
                    + of_period,
                    amount=line.amount - already, currency=currency,
                )  # fmt: skip
        except IntegrityError:
            continue  # a concurrent push took this sequence number; the next run catches up
        made.append(push)
    # Also retries pushes recorded earlier whose Stripe call never completed.
    pending = list(UsageChargePush.objects.for_tenant(tenant).filter(pushed_at__isnull=True))
    fresh = {push.pk for push in made}
    for push in sorted(pending, key=lambda push: push.pk):
        try:
            _send(api, push, sub, in_doubt=push.pk not in fresh)
        except stripe.InvalidRequestError as exc:
            # Refused for good (a closed period's item in a currency the new subscription
            # does not take, say): logged and left for a person, not in the way of the
            # pushes behind it. (Network and rate errors raise: the task retries them.)
            logger.error("usage push %s refused by Stripe: %s", push.idempotency_key, exc)
    waiting = UsageChargePush.objects.for_tenant(tenant).filter(awaiting_invoice=True)
    if sub.stripe_subscription_id:
        # Subscribed again: Stripe puts the customer's pending items on its next invoice.
        waiting.update(awaiting_invoice=False)
    elif awaiting := list(waiting):
        _invoice_ended_subscription(api, sub, awaiting)
    return made

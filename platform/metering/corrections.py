"""Ledger corrections: an operator voids a metered event (an answered classification, a
fine-tune) by its event id, with a reason (``manage.py ledger_void``, the ledger's admin).

The ledger is append-only (DESIGN: "Corrections are new rows, never edits"): a void appends
one correcting row that negates the event's billable quantities (inputs, cached, tokens) in
its tenant, mode, model, kind, API key, plan and moment, so every sum of the ledger (usage
reports, the upcoming invoice, rating, the Stripe push and reconciliation, the rollups, the
quota's ledger sum) nets it out, in the period the event was billed in. Its compute and cost
are 0: the compute was spent, so the margin goes down by the revenue lost.

Its event id is ``void_<event id>``: the ledger's uniqueness (``LedgerEventId`` and its
trigger on PostgreSQL, the unique constraint on SQLite) makes a second void of an event
fail, never count twice. A period already invoiced is not corrected here: the customer is
credited in Stripe instead (``billing.periods.period_open``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import fields
from datetime import datetime
from decimal import Decimal

import redis
from django.db import IntegrityError, transaction
from django.utils import timezone
from redis.exceptions import LockError

from billing.locks import lock_held, tenant_change_lock
from billing.models import Invoice, Subscription
from billing.periods import LATE_USAGE_HORIZON, period_of, period_open
from economics.services import rollup_apply, tenant_plans_now
from limits.reconcile import (
    GiveBack,
    quota_give_back,
    quota_give_back_abandon,
    quota_give_back_begin,
)
from tenants.models import Tenant

from . import messages
from .models import UsageRecord
from .services import LedgerRow

logger = logging.getLogger(__name__)

VOID_PREFIX = "void_"
_ID_LENGTH = 64  # UsageRecord.event_id's
_ACTOR_LENGTH = 150  # UsageRecord.corrected_by's


class VoidRefused(Exception):
    """A void that was not applied; its message says why, for an operator."""


def void_event_id(event_id: str) -> str:
    """The correcting row's event id: ``void_<event id>``, or, for an id too long to take
    the prefix within the column, ``void_`` and a digest of it (a cut id could be two
    events')."""
    whole = VOID_PREFIX + event_id
    if len(whole) <= _ID_LENGTH:
        return whole
    return VOID_PREFIX + hashlib.sha256(event_id.encode()).hexdigest()[: _ID_LENGTH - 5]


def usage_record_void(
    *, event_id: str, reason: str, actor: str = "", push: bool = True
) -> UsageRecord:
    """Append the correcting row that voids ``event_id`` and return it; ``VoidRefused``
    (nothing changed) for an unknown id, a correcting row, a test-mode event (never
    billed), an event voided already, a period closed for corrections, or no reason.
    ``actor``: who voids it, where known. ``push``: queue the credit's usage push as the void
    commits (``credit_push_soon``; a caller voiding many rows queues one a period itself)."""
    reason = reason.strip()
    if not reason:
        raise VoidRefused(messages.NO_REASON)
    if len(actor) > _ACTOR_LENGTH:  # (it was cut to fit, unsaid)
        raise VoidRefused(messages.ACTOR_TOO_LONG.format(limit=_ACTOR_LENGTH, length=len(actor)))
    # NOTE: unscoped on purpose: an operator's correction, of any tenant's event.
    original = UsageRecord.objects.unscoped().filter(event_id=event_id).first()
    if original is None:
        raise VoidRefused(messages.UNKNOWN_EVENT.format(event_id=event_id))
    if original.corrects:
        raise VoidRefused(
            messages.IS_CORRECTION.format(event_id=event_id, corrects=original.corrects)
        )
    if not original.livemode:
        raise VoidRefused(messages.TEST_MODE.format(event_id=event_id))
    if original.kind == UsageRecord.Kind.COMPUTE:
        raise VoidRefused(messages.UNBILLED.format(event_id=event_id))
    void_id = void_event_id(event_id)
    refused = VoidRefused(messages.ALREADY_VOIDED.format(event_id=event_id, void_id=void_id))
    if UsageRecord.objects.unscoped().filter(event_id=void_id).exists():
        raise refused
    # NOTE: under the tenant's plan-change lock, from the period's check to the commit: a
    # move to free pushes the period's usage and cancels with a final invoice; one that fell
    # between them invoiced the voided usage, and the credit, pushed after, was left on a
    # customer with no subscription (charged 2,800 for a ledger of 2,000).
    lock = tenant_change_lock(tenant_id=original.tenant_id)
    if not lock.acquire():  # (a Redis error: the callers' "nothing was changed")
        raise VoidRefused(messages.CHANGE_IN_PROGRESS.format(event_id=event_id))
    try:
        with lock_held(lock):
            correction = _void_locked(original, void_id, reason, actor, refused)
    finally:
        with contextlib.suppress(redis.RedisError, LockError):
            lock.release()
    if push:
        credit_push_soon([correction])
    return correction


def _void_locked(
    original: UsageRecord, void_id: str, reason: str, actor: str, refused: VoidRefused
) -> UsageRecord:
    event_id, tenant = original.event_id, original.tenant
    if not period_open(tenant=tenant, moment=original.occurred_at):
        start, end = period_of(tenant=tenant, moment=original.occurred_at)
        advice = (
            messages.CREDIT_IN_STRIPE if tenant_in_stripe(tenant) else messages.NOTHING_IN_STRIPE
        )
        raise VoidRefused(
            messages.PERIOD_CLOSED.format(
                event_id=event_id, start=start, end=end, days=LATE_USAGE_HORIZON.days, advice=advice
            )
        )
    row = LedgerRow(
        event_id=void_id, kind=original.kind, tenant_id=original.tenant_id,
        api_key_id=original.api_key_id, livemode=original.livemode, model=original.model,
        compute_ms=0.0, worker="", cost_micros=Decimal(0), pool="",
        occurred_at=original.occurred_at, inputs=-original.inputs, tokens=-original.tokens,
        cached=-original.cached, plan_id=original.plan_id, corrects=event_id,
        reason=reason, corrected_by=actor,
    )  # fmt: skip
    give = None
    if original.kind == UsageRecord.Kind.INFERENCE:
        # Marked before the commit, given back after it (the counter gives back only what
        # the ledger no longer holds); a ledger reading meanwhile is not written over it.
        give = quota_give_back_begin(
            tenant_id=original.tenant_id, occurred_at=original.occurred_at, inputs=original.inputs
        )
    try:
        correction = _append(row, refused)
    except BaseException:
        if give is not None:
            with contextlib.suppress(redis.RedisError):  # (the mark lapses by itself)
                quota_give_back_abandon(give)
        raise
    logger.info(
        "ledger correction %s voids %s (tenant %s, %s inputs, %s tokens) by %s: %s",
        void_id, event_id, original.tenant_id, original.inputs, original.tokens,
        actor or "an operator", reason,
    )  # fmt: skip
    if give is not None:
        # (a closure, not a partial: a robust hook that fails is logged by its __qualname__)
        transaction.on_commit(lambda: _give_back(give), robust=True)
    return correction


def credit_push_soon(corrections: list[UsageRecord]) -> None:
    """The corrected periods' credits go to Stripe once the voids commit, not at the next
    hourly push: a void made just before a renewal is on the invoice it corrects, not the
    one after. One push a tenant's period, however many rows of it were voided (a hundred
    voids queued a hundred pushes, each waiting on the tenant's push lock). Never raises:
    the voids are made, and the hourly push sends what this could not queue."""
    from billing.tasks import usage_push_period_enqueue  # (billing's tasks import Celery's app)

    try:
        queued: set[tuple[str, datetime]] = set()
        in_stripe: dict[str, bool] = {}
        for correction in corrections:
            tenant = correction.tenant
            if tenant.pk not in in_stripe:
                in_stripe[tenant.pk] = tenant_in_stripe(tenant)
            start, end = period_of(tenant=tenant, moment=correction.occurred_at)
            if (tenant.pk, start) in queued or not in_stripe[tenant.pk]:
                continue
            queued.add((tenant.pk, start))
            if end > timezone.now():
                usage_push_period_enqueue(tenant_id=tenant.pk)  # the current period
            else:
                usage_push_period_enqueue(tenant_id=tenant.pk, start=start, end=end)
    except Exception:  # (the hourly push sends it: a void made is not reported as failed)
        logger.exception("credit push of %d voids not queued (the hourly push sends it)",
                         len(corrections))  # fmt: skip


def tenant_in_stripe(tenant: Tenant) -> bool:
    """Whether the tenant was ever billed through Stripe (a customer, or an invoice)."""
    customer = Subscription.objects.for_tenant(tenant).exclude(stripe_customer_id="")
    return customer.exists() or Invoice.objects.for_tenant(tenant).exists()


def _append(row: LedgerRow, refused: VoidRefused) -> UsageRecord:
    """The correcting row and its rollup, in one transaction; ``refused`` where the
    ledger's uniqueness finds the void stored already (a concurrent one was first)."""
    with transaction.atomic():
        try:
            with transaction.atomic():  # (a savepoint: the refusal leaves nothing behind)
                correction = UsageRecord.objects.create(
                    **{f.name: getattr(row, f.name) for f in fields(row) if f.name != "recorded_at"}
                )
        except IntegrityError:
            raise refused from None
        # The rollups' grain is the original's: its plan as the rollups have it (a row from
        # before plans were recorded: the tenant's plan now, as a rebuild says).
        row.plan_id = row.plan_id or tenant_plans_now({row.tenant_id})[row.tenant_id]
        rollup_apply(rows=[row])
    return correction


def _give_back(give: GiveBack) -> None:
    try:
        left = quota_give_back(give)
    except redis.RedisError:
        # The row is committed: reconciliation will not give the inputs back (it never
        # lowers a counter), but a counter seeded afresh from the ledger will; the pending
        # mark lapses by itself (quota.PENDING_TTL_S).
        logger.exception("quota counter %s: %s voided inputs not given back (Redis)",
                         give.key, give.inputs)  # fmt: skip
        return
    if left >= 0:
        logger.info("quota counter %s: %s inputs given back (%s counted)", give.key,
                    give.inputs, left)  # fmt: skip

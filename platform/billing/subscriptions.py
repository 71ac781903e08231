"""Subscriptions: every tenant has one; it starts on ``free``. Paid plans live in Stripe
(customer, subscription, payment); the local row mirrors them and is what request-time
enforcement reads."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import LockError

from apikeys.generations import tenant_context_changed
from core.errors import Conflict, NotFound, Overloaded
from limits.services import free_plan_current
from plans.models import Plan
from plans.terms import FREE_SLUG
from tenants.models import Tenant

from . import messages
from .locks import lock_held, tenant_change_lock
from .models import Invoice, Subscription
from .periods import billed_currency, billing_period_record, calendar_month, plan_span_record
from .stripe_client import (
    PaymentRequired,
    as_dict,
    as_microseconds,
    is_missing,
    stripe_api,
    stripe_error_to_api,
    stripe_moment,
)
from .stripe_mirror import (
    STATUS_FROM_STRIPE,
    enforced_fields,
    free_apply,
    stripe_apply,
    stripe_period_start,
)
from .stripe_subscribe import stripe_subscribe
from .unpaid import past_due_clear

logger = logging.getLogger(__name__)
# An invoice still open this long after it was made has had a payment fail.
UNPAID_INVOICE_AGE = timedelta(days=1)


def plan_current(*, slug: str) -> Plan | None:
    if slug == FREE_SLUG:
        # Whatever its listing says: free is where every tenant can always go (unlisted in
        # the admin, it stopped every customer from cancelling: 404 "No such plan").
        return free_plan_current()
    return Plan.objects.filter(slug=slug, is_current=True, public=True).first()


def subscription_get_or_create(*, tenant: Tenant) -> Subscription:
    """The tenant's subscription; a new tenant gets ``free`` for this calendar month. A
    plan without Stripe rolls its calendar period forward here, once a month."""
    sub = Subscription.objects.for_tenant(tenant).select_related("plan").first()
    now = timezone.now()
    if sub is None:
        start, end = calendar_month(now)
        free = free_plan_current()
        sub, created = Subscription.objects.select_related("plan").get_or_create(
            tenant=tenant,
            defaults={"plan": free, "current_period_start": start, "current_period_end": end},
        )
        if created:
            billing_period_record(sub=sub)
    elif not sub.stripe_subscription_id and sub.plan.slug == FREE_SLUG and not sub.plan.is_current:
        # Nobody signs free: its tenants follow the operator's current version (a row made
        # on free@6 kept free@6's limits after free@7, while tenants without a row had 7's).
        free = free_plan_current()
        # (Only the row as read: a plan change committed since must not be undone.)
        row = Subscription.objects.for_tenant(tenant).filter(
            pk=sub.pk, plan_id=sub.plan_id, stripe_subscription_id=""
        )
        if free.pk != sub.plan_id and row.update(plan=free):
            sub.plan = free
            tenant_context_changed(tenant_id=tenant.pk)
        elif free.pk != sub.plan_id:  # changed since the read: as it is now
            sub = Subscription.objects.for_tenant(tenant).select_related("plan").get()
    if not sub.stripe_subscription_id and now >= sub.current_period_end:
        with transaction.atomic():
            # Read again, locked: a plan change committed since the read above must not be
            # rolled over as a free month (nor its period recorded as one).
            sub = (
                Subscription.objects.for_tenant(tenant)
                .select_for_update()
                .select_related("plan")
                .get()
            )
            if not sub.stripe_subscription_id and now >= sub.current_period_end:
                sub.current_period_start, sub.current_period_end = calendar_month(now)
                sub.save(update_fields=["current_period_start", "current_period_end", "updated_at"])
                billing_period_record(sub=sub)
    return sub


@dataclass(frozen=True)
class Enforcement:
    """What request-time enforcement needs: the plan (limits) and whether billable calls
    are refused with 402 ``payment_required`` (past_due beyond the grace period)."""

    plan: Plan
    status: str
    past_due_since: datetime | None
    blocked: bool


def subscription_payment_blocked(sub: Subscription) -> bool:
    """Past due for longer than the grace period: billable calls are refused."""
    return (
        sub.status == Subscription.Status.PAST_DUE
        and sub.past_due_since is not None
        and timezone.now() - sub.past_due_since > timedelta(days=settings.PAST_DUE_GRACE_DAYS)
    )


def subscription_for_enforcement(*, tenant: Tenant) -> Enforcement:
    """One indexed query (the row and its plan) in the common case."""
    sub = subscription_get_or_create(tenant=tenant)
    return Enforcement(
        plan=sub.plan,
        status=sub.status,
        past_due_since=sub.past_due_since,
        blocked=subscription_payment_blocked(sub),
    )


def _stripe_leave(sub: Subscription) -> None:
    """Push the period's usage so far and cancel the Stripe subscription, if any."""
    if sub.stripe_subscription_id:
        from .invoicing import PushInProgress, usage_charges_push  # (invoicing reads us)

        try:
            # A renewal whose webhook was lost left the new period unrecorded, and its usage
            # was never pushed nor checked: Stripe's period first, where it is a later one.
            current = as_dict(stripe_api().Subscription.retrieve(sub.stripe_subscription_id))
            if (stripe_period_start(current) or sub.current_period_start) > (
                sub.current_period_start
            ):
                subscription_refresh_from_stripe(
                    customer_id=sub.stripe_customer_id,
                    stripe_subscription_id=sub.stripe_subscription_id,
                    snapshot=current,
                    event_created=0,
                )
            # The period's usage so far goes on the final invoice that cancelling issues
            # (behind a push still running, or with Redis down, it is pushed later, on an
            # invoice of its own: the request does not wait for it).
            with contextlib.suppress(PushInProgress, redis.RedisError):
                usage_charges_push(tenant=sub.tenant, wait_s=0)
            stripe_api().Subscription.cancel(sub.stripe_subscription_id, invoice_now=True)
        except stripe.StripeError as exc:
            if not is_missing(exc):
                raise stripe_error_to_api(exc) from exc


def subscription_change(
    *, tenant: Tenant, plan_slug: str, to_current_version: bool = False
) -> Subscription:
    """Move the tenant to the current version of a plan: a paid plan creates or changes the
    Stripe subscription (with proration), ``free`` cancels it. Asking for the plan the
    tenant is already on changes nothing, unless ``to_current_version`` (the operator's move
    of a plan's subscribers onto its current version: ``billing.versions``).

    One change at a time per tenant (a Redis lock around the read and the Stripe calls):
    two concurrent changes from free would otherwise each create a Stripe subscription, and
    the loser would keep renewing, unrecorded. A change that waits longer than
    ``CHANGE_WAIT_S`` for the one before it is a 409."""
    plan = plan_current(slug=plan_slug)
    if plan is None:
        raise NotFound(
            messages.UNKNOWN_PLAN.format(plan=plan_slug), code="resource_missing", param="plan"
        )
    lock = tenant_change_lock(tenant_id=tenant.pk)
    try:
        acquired = lock.acquire()
    except redis.RedisError:
        raise Overloaded(messages.LOCK_STORE_DOWN, code="broker_unavailable") from None
    if not acquired:
        raise Conflict(messages.CHANGE_IN_PROGRESS, code="subscription_change_in_progress")
    try:
        with lock_held(lock):
            return _change_locked(tenant, plan, to_current_version)
    finally:
        with contextlib.suppress(redis.RedisError, LockError):
            lock.release()


def _change_locked(tenant: Tenant, plan: Plan, to_current_version: bool) -> Subscription:
    sub = subscription_get_or_create(tenant=tenant)  # read under the lock
    if sub.plan.slug == plan.slug and (sub.plan_id == plan.pk or not to_current_version):
        # The plan it is on, whatever version: subscribers keep the version they signed (an
        # operator's newer, dearer one moved them, with a credit for the old fee).
        return sub
    billed = billed_currency(tenant=tenant) if plan.base_fee else None
    if billed and plan.currency != billed:
        # An account keeps one currency: a period's charges were summed under one label
        # (/v1/usage said 2,033 EUR for 2,000 USD cents and 33 EUR cents), and a range of
        # /v1/usage across a move to free and back did the same. (Stripe itself takes a new
        # currency once the old one's subscription is cancelled; this is our rule.)
        raise Conflict(
            messages.CURRENCY_MISMATCH.format(
                current=billed.upper(), target=plan.currency.upper(), plan=plan.slug
            ),
            code="currency_mismatch",
            param="plan",
        )
    if plan.base_fee and sub.status == Subscription.Status.PAST_DUE:
        # A new paid plan would raise a new invoice on a card that is failing already.
        raise PaymentRequired(messages.PAST_DUE_CHANGE, code="subscription_unpaid")
    unpaid = Invoice.objects.for_tenant(tenant).filter(
        status="open", amount_due__gt=0, created_at__lt=timezone.now() - UNPAID_INVOICE_AGE
    )
    if plan.base_fee and (invoice := unpaid.order_by("created_at").first()) is not None:
        # Past due, then free, then a paid plan again: the unpaid block was gone with the
        # subscription, and its open invoice was left behind (cancelling stops collection).
        # NOTE: only one open for a day, so a payment has failed: Stripe first tries an
        # hour after an invoice is made (a move to free's final one, say), and a return to
        # a paid plan within it must not be refused.
        raise PaymentRequired(
            messages.OPEN_INVOICE_CHANGE.format(
                invoice=invoice.number or invoice.id,
                amount=f"{invoice.amount_due - invoice.amount_paid:,}",
                currency=invoice.currency.upper(),
            ),
            code="subscription_unpaid",
        )
    if not plan.base_fee:
        _stripe_leave(sub)
        with transaction.atomic():
            # Read again, locked: an invoice event handled during the cancel may have
            # cleared past due (saving the row read before it wrote the debt back), and the
            # cancel's own event may have moved it to free already.
            sub = Subscription.objects.for_tenant(tenant).select_for_update().get()
            if sub.stripe_subscription_id or sub.plan_id != plan.pk:
                # From one plan without a fee to another, the period goes on: a new one from
                # now began a new quota (it counts by the period's start), and moves between
                # free and another such plan, three times over, served 39,936 inputs in a
                # month of free's 10,000 (an audit).
                keep = (
                    not sub.stripe_subscription_id
                    and not sub.plan.base_fee
                    and sub.current_period_end > timezone.now()
                )
                was = (sub.plan_id, sub.current_period_start)
                free_apply(sub, plan, keep_period=keep)
                sub.save()
                billing_period_record(sub=sub)
                plan_span_record(sub=sub, was=was[0], was_since=was[1], new_period=not keep)
        past_due_clear(tenant_id=tenant.pk)
        tenant_context_changed(tenant_id=tenant.pk)  # new limits on its next request
        return Subscription.objects.for_tenant(tenant).select_related("plan").get()
    try:
        stripe_sub = stripe_subscribe(sub, plan, tenant)
    except (stripe.StripeError, PaymentRequired) as exc:
        if isinstance(exc, stripe.CardError | PaymentRequired):
            # Declined: nothing was subscribed. The next attempt is a new one (its
            # idempotency key follows the row), not a replay of this decline.
            Subscription.objects.for_tenant(tenant).filter(pk=sub.pk).update(
                updated_at=timezone.now()
            )
        logger.warning("plan change for %s to %s failed in Stripe: %s", tenant.id, plan.id, exc)
        if isinstance(exc, PaymentRequired):
            raise
        raise stripe_error_to_api(exc) from exc
    with transaction.atomic():
        sub = Subscription.objects.for_tenant(tenant).select_for_update().get()
        before = enforced_fields(sub)
        stripe_apply(sub, stripe_sub, stripe_moment())
        sub.save()
        billing_period_record(sub=sub)
        new_period = before.stripe_subscription_id != sub.stripe_subscription_id  # a new one
        plan_span_record(sub=sub, was=before.plan_id, was_since=before.period_start,
                         new_period=new_period)  # fmt: skip
    tenant_context_changed(tenant_id=tenant.pk)  # new limits on its next request
    return sub


def subscription_refresh_from_stripe(
    *, customer_id: str, stripe_subscription_id: str, snapshot: dict[str, Any], event_created: int
) -> Subscription | None:
    """Called for every subscription or invoice event: the subscription is re-read from
    Stripe, so duplicates and out-of-order deliveries all converge on Stripe's current
    state. Only if Stripe no longer has it is the event's snapshot used, and then only
    when it is newer than what the row holds."""
    if not customer_id:
        return None  # (an empty id would match every tenant without a Stripe customer)
    # NOTE: unscoped on purpose: a webhook has no tenant context; the customer id is ours.
    row = Subscription.objects.unscoped().filter(stripe_customer_id=customer_id).first()
    if row is None:
        logger.info("Stripe event for customer %s, who is not one of ours", customer_id)
        return None
    reread = True
    observed_at = stripe_moment()  # (before the read: see stripe_moment)
    try:
        current = as_dict(
            stripe_api().Subscription.retrieve(stripe_subscription_id, expand=["latest_invoice"])
        )
    except stripe.StripeError as exc:
        if not is_missing(exc):
            raise  # Stripe unreachable: the task retries
        # (An event's snapshot is of its second: it wins a tie within it, as before.)
        current, observed_at, reread = snapshot, event_created * 1_000_000 + 999_999, False
    if reread and current.get("customer") not in (None, customer_id):
        logger.warning("Stripe subscription %s is not customer %s's", stripe_subscription_id,
                       customer_id)  # fmt: skip
        return None
    with transaction.atomic():
        sub = Subscription.objects.unscoped().select_for_update().get(pk=row.pk)
        if sub.stripe_subscription_id and sub.stripe_subscription_id != stripe_subscription_id:
            return sub  # about a subscription the tenant has since left
        live = STATUS_FROM_STRIPE.get(str(current.get("status"))) != Subscription.Status.CANCELED
        if not sub.stripe_subscription_id and not (reread and live):
            return sub  # already back on free; a late event must not resurrect a dead one
        if observed_at <= as_microseconds(sub.stripe_updated_at):
            # Read before (or while) the state we hold was: not newer than it. (A read begun
            # after a change of ours, or after another read, is.)
            return sub
        previous_start = sub.current_period_start
        renewal = sub.stripe_subscription_id == stripe_subscription_id
        enforced = enforced_fields(sub)
        stripe_apply(sub, current, observed_at)
        sub.save()
        billing_period_record(sub=sub)
        new_period = enforced.stripe_subscription_id != sub.stripe_subscription_id  # adopted
        # A change made in Stripe happened by its event (processed later, or re-read daily).
        at = datetime.fromtimestamp(event_created, UTC) if event_created > 0 else None
        plan_span_record(sub=sub, was=enforced.plan_id, was_since=enforced.period_start,
                         new_period=new_period, at=at)  # fmt: skip
        if enforced_fields(sub) != enforced:  # (most events change nothing requests are held to)
            tenant_context_changed(tenant_id=sub.tenant_id)
        # (Not on adoption: a free calendar month before it is not this plan's to bill.)
        if renewal and sub.stripe_subscription_id and sub.current_period_start > previous_start:
            from .tasks import usage_push_period_enqueue

            # The period rolled over: bill the closed period's last usage now.
            usage_push_period_enqueue(
                tenant_id=sub.tenant_id, start=previous_start, end=sub.current_period_start
            )
    if not sub.stripe_subscription_id:  # (dunning cancelled it: still owed?)
        past_due_clear(tenant_id=sub.tenant_id)
    return sub

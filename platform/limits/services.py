"""Request-time enforcement: plan and key rate limits, the per-tenant concurrency cap on
inference and the period's hard cap on inputs, in one Redis round trip before a request is
admitted (``limits_admit``) and one after it is answered (``limits_settle``).

Both round trips can carry another module's commands, so that a request pays for as few as
it can: admission reads the keys a view asks to ``prefetch`` (the result cache's rows for a
classification) in the same round trip, and may meter and settle a call those rows answer
whole (``hits``: then there is no second); ``settle_commands`` adds the settlement to a
pipeline the caller executes anyway (the usage event of a classification answered from the
cache).

A period's quota counter that Redis does not have (the period's first reservation, or a
Redis that lost its data) is seeded from the ledger before anything is reserved against
it: a flush must not hand a tenant its cap again. That costs a query only then; the common
path reads no database."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import redis
from django.conf import settings
from django.utils import timezone

from apikeys.models import ApiKey
from billing.periods import calendar_month, monthly_periods_after
from core.errors import APIError
from plans.models import Plan
from tenants.models import Tenant

from . import messages
from .hits import HitMeter, Unconfirmed, meter_args, run_until_answered
from .lua import ADMIT, REFUND, RELEASE
from .quota import quota_cap, quota_key, quota_seed, quota_unreadable
from .quota import redis_client as redis_client

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
# Every reservation not yet settled, sorted by when its call must have ended (``lua``).
HOLDS_KEY = "quota:holds"


def quota_period(terms: Enforcement, *, livemode: bool, now: datetime) -> tuple[datetime, datetime]:
    """The span a quota counter counts: the billing period for live calls; the calendar
    month (UTC) for test-mode calls, whose allowance is monthly whatever the billing does (a
    plan change that begins a new billing period must not hand out a fresh allowance)."""
    return (terms.period_start, terms.period_end) if livemode else calendar_month(now)


@functools.cache
def _admit_script() -> Any:
    return redis_client().register_script(ADMIT)


@dataclass
class Admission:
    """What was decided for one request, and what must be given back when it ends."""

    limit: int
    remaining: int
    reset_s: int
    request_id: str = ""
    inflight_key: str = ""
    quota_key: str = ""
    reserved: int = 0
    # The reservation's entry in the set of holds ("" for none: nothing reserved, or a
    # settlement that failed after it had removed it; see ``inference.cache``).
    held: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # The values of the keys admission was asked to prefetch (None where a key is unset),
    # or None when they could not be read with it.
    prefetched: dict[str, bytes | None] | None = None
    # Settled already, in a pipeline the request ran anyway (see ``settle_commands``).
    settled: bool = False
    # Answered from the result cache and metered by admission itself (``hits``).
    metered: bool = False
    # The plan version the request was admitted under (what its usage is priced by).
    plan_id: str = ""
    # When it was admitted (unix seconds; 0: unknown): its usage is dated then, so a call
    # answered after its period ended is counted and billed in the period that reserved it.
    admitted_at: float = 0.0


@dataclass(frozen=True)
class Enforcement:
    """Plan terms that apply to a tenant now; see ``enforcement_for``."""

    plan: Plan
    period_start: datetime
    period_end: datetime
    blocked_reason: str = ""  # non-empty: billable calls are refused (402)


def period_now(subscription: Any, now: datetime) -> tuple[datetime, datetime]:
    """The period a tenant's live calls count in at ``now``: its subscription's current
    period; a Stripe subscription's period that Stripe renewed with no webhook here yet,
    the next of its monthly periods (the webhook then records it: the same start, so the
    same quota counter); else (no subscription, free) the calendar month.

    NOTE: the calendar month stood in for a renewed period too: its counter, seeded from
    the ledger since the 1st, held the period before's usage, and a capped paid plan was
    refused (402) at its new period's start until the webhook came (an audit)."""
    if subscription is not None:
        start, end = subscription.current_period_start, subscription.current_period_end
        if start <= now < end:
            return start, end
        if now >= end and subscription.stripe_subscription_id and subscription.status != "canceled":
            return monthly_periods_after(start, end, now)
    return calendar_month(now)


FREE_PLAN_TTL_S = 5.0
_free: dict[str, Any] = {"plan": None, "read_at": 0.0}


def free_plan_current() -> Plan:
    """The current free plan, re-read at most every few seconds (operators may revise it)."""
    now = time.monotonic()
    if _free["plan"] is None or now - _free["read_at"] > FREE_PLAN_TTL_S:
        _free["plan"], _free["read_at"] = _free_plan_read(), now
    return cast(Plan, _free["plan"])


def _free_plan_read() -> Plan:
    plan = Plan.objects.filter(slug="free", is_current=True).first()
    if plan is None:
        # NOTE: the admin refuses to leave free without a current version, but a shell or a
        # migration can: every tenant without a subscription is on free, so serve its latest
        # version rather than a 500 each, and say so (once per re-read, not per request).
        plan = Plan.objects.filter(slug="free").latest("version")  # none at all: raises
        logger.error(
            "no current version of the free plan: enforcing %s, its latest; make one current",
            plan.pk,
        )
    return plan


def _blocked_reason(subscription: Any, now: datetime) -> str:
    """Why billable calls are refused (402), or "": unpaid beyond the grace, or cancelled."""
    if subscription.status == "past_due" and subscription.past_due_since is not None:
        grace = timedelta(days=getattr(settings, "PAST_DUE_GRACE_DAYS", 7))
        return messages.PAST_DUE if subscription.past_due_since + grace <= now else ""
    return messages.CANCELED if subscription.status == "canceled" else ""


def enforcement_for(
    api_key: ApiKey, *, tenant: Tenant | None = None, now: datetime | None = None
) -> Enforcement:
    """The tenant's plan and period at ``now`` (default: now), from the subscription loaded
    with the key (no query in the common case), or with ``tenant`` (one read afresh). A
    tenant without a subscription row is on the free plan."""
    now = now or timezone.now()
    subscription = getattr(tenant or api_key.tenant, "subscription", None)
    start, end = period_now(subscription, now)
    if subscription is None:
        return Enforcement(free_plan_current(), start, end)
    # Test mode is never billed: an unpaid bill does not stop it.
    blocked = _blocked_reason(subscription, now) if api_key.livemode else ""
    plan = subscription.plan
    if plan.slug == "free" and not plan.is_current and not subscription.stripe_subscription_id:
        plan = free_plan_current()  # nobody signs free: its current version's limits
    return Enforcement(plan, start, end, blocked)


def _headers(limit: int, remaining: int, reset_ms: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(remaining, 0)),
        "RateLimit-Reset": str(max(math.ceil(reset_ms / 1000), 0)),
    }


def _counter_missing(reply: Any) -> bool:
    return reply[0] in (b"seed", "seed")


def _admit_once(keys: list[str], args: list[Any], prefetch: Sequence[str]) -> Any:
    """The admission script's reply; an "ok" carries the values of ``prefetch``, read in
    the same round trip, and whether the request was metered (``hits``)."""
    return _admit_script()(keys=[*keys, *prefetch], args=args)


# The admission script's ARGV index of the quota counter's seed (0-based).
SEED = 10
# The refusals that take the request's rate-limit token (lua.ADMIT): an admission run again
# for the request passes ``token_taken``.
TOKEN_TAKEN_BY = frozenset({"concurrency_limited", "quota_exceeded"})


def limits_admit(
    *,
    api_key: ApiKey,
    request_id: str,
    inputs: int = 0,
    billable: bool = False,
    prefetch: Sequence[str] = (),
    token_taken: bool = False,
    hit_meter: HitMeter | None = None,
) -> Admission:
    """Admit a request or raise: 429 (rate limit, concurrency cap), 402 (quota, unpaid).

    ``inputs`` > 0 marks an inference call: it takes a concurrency slot and reserves its
    inputs against the hard cap until ``limits_settle``. The values of the ``prefetch``
    keys come back on the admission (``prefetched``), read in the same round trip.
    ``token_taken``: an admission run again for a request that took its rate-limit token
    already (``TOKEN_TAKEN_BY``: admitted, or refused for the cap or the quota), which
    takes none again. ``hit_meter``: meter the request now if every row it names is
    cached (``hits``); the admission then comes back ``metered`` and settled."""
    at = timezone.now()
    terms = enforcement_for(api_key, now=at)
    plan = terms.plan
    if billable and terms.blocked_reason:
        # The same code as a fine-tune refused for it (finetuning.services).
        raise APIError(terms.blocked_reason, status=402, code="subscription_unpaid")
    tenant_id = api_key.tenant_id
    # Test mode is counted apart, its rate limit and concurrency too (as Stripe's modes):
    # a customer's CI load on sk_test_ keys throttled its production calls.
    mode = "" if api_key.livemode else ":test"
    counted = quota_period(terms, livemode=api_key.livemode, now=at)
    keys = [
        f"rl:t:{tenant_id}{mode}",
        f"rl:k:{api_key.pk}",
        f"inflight:{tenant_id}{mode}",
        quota_key(tenant_id, counted[0], livemode=api_key.livemode),
        HOLDS_KEY,
    ]
    hard_cap = quota_cap(plan, livemode=api_key.livemode)
    quota_ttl = int((counted[1] - counted[0]).total_seconds()) + 7 * 86400
    inflight_ttl_ms = int((settings.INFERENCE_TIMEOUT_S + 30) * 1000)
    args = [
        int(time.time() * 1000),
        WINDOW_MS,
        plan.rate_limit_per_minute,
        plan.key_rate_limit_per_minute or plan.rate_limit_per_minute,
        plan.concurrency_cap,
        inputs,
        hard_cap,
        request_id,
        inflight_ttl_ms,
        quota_ttl,
        -1,  # the quota counter's seed: read from the ledger only if the script asks
        "1" if token_taken else "0",
        *meter_args(hit_meter, plan_id=plan.pk, admitted_at=at.timestamp()),
    ]
    admit = functools.partial(_admit_once, keys, args, prefetch)
    if hit_meter is not None and inputs > 0:
        give_up_at = time.time() + settings.INFERENCE_TIMEOUT_S
        admit = functools.partial(run_until_answered, admit, give_up_at=give_up_at)
    try:
        reply = admit()
        if _counter_missing(reply):  # the quota counter: the ledger is read only then
            seeding = functools.partial(
                quota_seed, api_key=api_key, period=counted, key=keys[3], ttl=quota_ttl
            )
            args[SEED] = seeding(found_missing_at=time.monotonic())
            reply = admit()
            if _counter_missing(reply):  # lost again since another request seeded it
                args[SEED] = seeding(found_missing_at=math.inf)
                reply = admit()
        verdict, limit, remaining, reset_ms, retry_ms, used = reply[:6]
    except redis.RedisError as exc:
        # NOTE: fail open on limits but never on money. A call that reserves inputs against
        # a hard cap is refused (503): a Redis that stalled rather than went away takes the
        # message once it resumes, and the call would run past the cap, billed (an audit:
        # 8 calls of 96 inputs past a free plan's 10,000 in an 8 s stall). Other calls are
        # served without rate limiting or the concurrency cap; a broker that is really
        # down fails them anyway (503 from dispatch). A call whose admission may have
        # metered it (``hits``) is a 503 that says it may have been billed.
        if isinstance(exc, Unconfirmed):
            raise APIError(
                messages.HIT_UNCONFIRMED, status=503, code="broker_unavailable",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        if inputs > 0 and hard_cap >= 0:
            raise quota_unreadable() from None
        return Admission(
            plan.rate_limit_per_minute,
            plan.rate_limit_per_minute,
            0,
            plan_id=plan.pk,
            admitted_at=at.timestamp(),
        )
    headers = _headers(int(limit), int(remaining), int(reset_ms))
    verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
    if verdict == "rate":
        retry = str(max(math.ceil(int(retry_ms) / 1000), 1))
        raise APIError(
            messages.RATE_LIMITED.format(limit=limit),
            status=429,
            code="rate_limited",
            headers={**headers, "Retry-After": retry},
        )
    if verdict == "concurrency":
        raise APIError(
            messages.CONCURRENCY.format(cap=plan.concurrency_cap),
            status=429,
            code="concurrency_limited",
            headers={**headers, "Retry-After": "1"},
        )
    if verdict == "quota":
        left = max(hard_cap - int(used), 0)
        live = api_key.livemode
        if left:  # some is left, not enough for this request
            message = messages.QUOTA_LEFT if live else messages.TEST_QUOTA_LEFT
        else:
            message = messages.QUOTA if live else messages.TEST_QUOTA
        raise APIError(
            message.format(cap=hard_cap, plan=plan.name, inputs=inputs, left=left),
            status=402,
            code="quota_exceeded",
            headers=headers,
        )
    values: list[Any] | None = reply[6] if len(reply) > 6 else None
    if values is not None and reply[7]:  # answered from the cache: metered, settled, nothing held
        return Admission(
            int(limit), int(remaining), math.ceil(int(reset_ms) / 1000),
            headers=headers, prefetched=dict(zip(prefetch, values, strict=True)),
            settled=True, metered=True, plan_id=plan.pk, admitted_at=at.timestamp(),
        )  # fmt: skip
    reserved = inputs if inputs and hard_cap >= 0 else 0
    return Admission(
        int(limit),
        int(remaining),
        math.ceil(int(reset_ms) / 1000),
        request_id=request_id if inputs and plan.concurrency_cap >= 0 else "",
        inflight_key=keys[2],
        quota_key=keys[3] if reserved else "",
        reserved=reserved,
        held=f"{request_id} {reserved} {keys[3]} {request_id}" if reserved else "",
        headers=headers,
        prefetched=dict(zip(prefetch, values, strict=True)) if prefetch and values else None,
        plan_id=plan.pk,
        admitted_at=at.timestamp(),
    )


def limits_settle(admission: Admission, *, succeeded: bool) -> None:
    """Give back the concurrency slot; refund the reserved inputs unless the call was
    answered (an answered call's inputs are in the ledger, which the quota follows)."""
    if admission.settled or (not admission.request_id and not admission.reserved):
        return
    pipe = redis_client().pipeline(transaction=False)
    settle_commands(pipe, admission, succeeded=succeeded)
    # On failure the slot expires by itself, and the sweep of holds settles the reservation.
    with contextlib.suppress(redis.RedisError):
        pipe.execute()


def settle_commands(pipe: Any, admission: Admission, *, succeeded: bool) -> None:
    """Add ``admission``'s settlement to ``pipe`` (a non-transactional pipeline on the same
    Redis). The caller marks the admission ``settled`` once the pipeline has run, so that
    ``limits_settle`` does not settle it again; if it fails, ``limits_settle`` does."""
    if admission.request_id:
        pipe.zrem(admission.inflight_key, admission.request_id)
    if admission.held:  # the hold goes, and its inputs go back where the call failed
        # NOTE: EVAL, not a registered script: in a pipeline redis-py checks a registered
        # script with SCRIPT EXISTS first, a round trip of its own on every settlement (a
        # settlement's p50 0.14-0.17 -> 0.31 ms in bench_limits.py).
        refund = "0" if succeeded else "1"
        pipe.eval(
            RELEASE, 2, HOLDS_KEY, admission.quota_key, admission.held, admission.reserved, refund
        )
    elif admission.reserved and not succeeded:
        pipe.eval(REFUND, 1, admission.quota_key, admission.reserved)

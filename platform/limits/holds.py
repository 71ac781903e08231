"""Quota reservations whose call never settled, released.

Admission reserves a call's inputs against the period's hard cap and holds the reservation
(``lua.ADMIT``) until the call is settled (``services.settle_commands``): kept if the call was
answered, given back if it failed. An API process that dies in between (a deploy's SIGKILL,
the out-of-memory killer, a lost settlement round trip) leaves the reservation held. Before
holds were kept, it stayed counted for the rest of the period: a tenant on a capped plan was
refused (402) before its cap, by up to 96 inputs a call lost that way, and reconciliation
never lowers a counter.

This sweep takes the holds whose call must have ended at least ``HOLD_GRACE_S`` ago (the
usage consumer's time to write an answered call's ledger row) and releases each: its inputs
stay counted where the ledger has the call (the worker answered, the API never said so), and
go back where it has not. A ledger row that lands after its call's inputs were given back
(a usage consumer down for longer than the grace) is counted again by reconciliation, which
raises a counter to its ledger. Each hold is released by whoever removes it from the set
(``lua.RELEASE``), so a settlement that runs at the same time never refunds it twice."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from django.db import connection
from prometheus_client import Counter

from metering.models import LedgerEventId, UsageRecord

from .lua import RELEASE
from .services import HOLDS_KEY, Admission, redis_client

logger = logging.getLogger(__name__)
HOLD_GRACE_S = 300
HOLDS_RELEASED = Counter(
    "quota_holds_released_total",
    "Quota reservations of calls that never settled, by whether their inputs went back.",
    ["refunded"],
)


@dataclass(frozen=True)
class Released:
    refunded: int  # holds whose inputs went back (the call has no ledger row)
    kept: int  # holds whose inputs stay counted (the call is in the ledger)
    refunded_inputs: int


def quota_holds_release(*, now: float | None = None, batch: int = 1000) -> Released:
    """Release the holds of calls that must have ended ``HOLD_GRACE_S`` before ``now``
    (unix seconds), ``batch`` at a time until none is left."""
    cutoff_ms = int(((time.time() if now is None else now) - HOLD_GRACE_S) * 1000)
    client = redis_client()
    release: Any = client.register_script(RELEASE)
    refunded = kept = inputs_back = 0
    while holds := client.zrangebyscore(HOLDS_KEY, "-inf", cutoff_ms, start=0, num=batch):
        parsed = [_parse(cast(bytes, hold)) for hold in holds]
        answered = _in_ledger([request_id for _, request_id, _, _ in parsed])
        pipe = client.pipeline(transaction=False)
        for hold, request_id, inputs, counter in parsed:
            refund = request_id not in answered and inputs > 0
            release(keys=[HOLDS_KEY, counter], args=[hold, inputs, "1" if refund else "0"],
                    client=pipe)  # fmt: skip
        for (_, request_id, inputs, counter), given in zip(parsed, pipe.execute(), strict=True):
            if request_id in answered:
                kept += 1
            elif given is not None:  # (None: settled meanwhile, or its counter gone)
                refunded += 1
                inputs_back += inputs
                logger.warning("quota hold of %s released: %d inputs back to %s (unsettled)",
                               request_id, inputs, counter)  # fmt: skip
    HOLDS_RELEASED.labels(refunded="true").inc(refunded)
    HOLDS_RELEASED.labels(refunded="false").inc(kept)
    return Released(refunded=refunded, kept=kept, refunded_inputs=inputs_back)


# A hold re-keyed to the request id its call takes over (KEYS 1: the set of holds, 2: the
# counter; ARGV 1: the hold now, 2: its hold under the id taken over, 3: a pattern matching
# every hold of earlier attempts under that id, 4: their inputs, 5: now in ms). Each such
# hold past its call's end (its API is gone: a live one settles its own) is superseded:
# its inputs go back.
REKEY = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return false
end
local given = 0
local cursor = '0'
repeat
  local page = redis.call('ZSCAN', KEYS[1], cursor, 'MATCH', ARGV[3], 'COUNT', 200)
  cursor = page[1]
  for i = 1, #page[2], 2 do
    local hold, ends = page[2][i], tonumber(page[2][i + 1])
    if hold ~= ARGV[1] and ends <= tonumber(ARGV[5])
       and redis.call('ZREM', KEYS[1], hold) == 1
       and redis.call('EXISTS', KEYS[2]) == 1 then
      redis.call('DECRBY', KEYS[2], ARGV[4])
      given = given + tonumber(ARGV[4])
    end
  end
until cursor == '0'
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], score, ARGV[2])
return given
"""


def hold_rekey(admission: Admission, *, request_id: str) -> None:
    """An Idempotency-Key retry that takes over its first attempt's request id (that
    attempt's API died mid-call): its hold moves to that id, which its ledger row will carry,
    and the holds of earlier attempts under that id (the first's, and a second's that died
    too), if still there and past their call's end, are released with their inputs given
    back. Before, they were kept (the ledger has the id: the retry's row) beside the retry's
    reservation: the call counted twice, or more, against the cap. Each hold names the
    attempt that made it, so an earlier attempt still running (slow, not dead) settles its
    own hold, never the retry's."""
    if not admission.held:
        return
    _, inputs, counter, own = admission.held.split(" ", 3)
    if own == request_id:
        return
    taken_over = f"{request_id} {inputs} {counter} {own}"
    earlier = f"{_glob_escaped(request_id)} {inputs} {_glob_escaped(counter)} *"
    script: Any = redis_client().register_script(REKEY)
    now_ms = int(time.time() * 1000)
    with contextlib.suppress(redis.RedisError):  # (the sweep settles it then, by its old id)
        script(
            keys=[HOLDS_KEY, counter], args=[admission.held, taken_over, earlier, inputs, now_ms]
        )
        admission.held = taken_over


def _glob_escaped(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _in_ledger(event_ids: list[str]) -> set[str]:
    """The ids the ledger has. On PostgreSQL read from its ids table, by primary key: the
    ledger itself is partitioned by month, and a lookup by id there reads every month."""
    if connection.vendor == "postgresql":
        ids = LedgerEventId.objects.filter(event_id__in=event_ids).values_list("event_id")
    else:
        ids = UsageRecord.objects.unscoped().filter(event_id__in=event_ids).values_list("event_id")
    return {str(event_id) for (event_id,) in ids}


def _parse(hold: bytes | str) -> tuple[str, str, int, str]:
    """(hold, request id, inputs, counter key) from "<request id> <inputs> <counter key>
    <attempt's id>"; one that does not parse (written by no version of this code) is
    released, refunding nothing."""
    text = hold.decode() if isinstance(hold, bytes) else hold
    request_id, count, counter, *_ = [*text.split(" ", 3), "", "", ""]
    return text, request_id, int(count) if count.isdigit() else 0, counter or HOLDS_KEY

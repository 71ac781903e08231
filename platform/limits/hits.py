"""Metering a full result-cache hit in its admission round trip (``lua.ADMIT``): a request
answered from the cache then needs no second round trip for its usage event and its
settlement, the one that cost a hit ~a tenth of the API's time (py-spy, an earlier round).

The caller (the classify view) says what to meter with a ``HitMeter``: which of the
prefetched keys are the request's result-cache rows, the usage event to add when every row
is there, and the API key's generation to find unchanged. The script meters only a request
it admits; anything that could refuse the request after admission must be ruled out by the
caller before it asks (see ``ClassifyApi.admission_meter``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

logger = logging.getLogger(__name__)

# Between tries of an admission whose reply was lost (a Redis that stalled or restarted).
RETRY_PAUSE_S = 0.2


@dataclass(frozen=True)
class HitMeter:
    """``rows``: how many of the prefetched keys, first, are the request's cached rows.
    ``event(plan_id, admitted_at)``: its usage event as JSON before and after its tokens
    (the rows' sum, added by the script). ``confirm``: the value the prefetched key after
    the rows must hold (the API key's generation), or None."""

    rows: int
    stream: str
    event: Callable[[str, float], tuple[str, str]]
    confirm: bytes | None = None


def meter_args(meter: HitMeter | None, *, plan_id: str, admitted_at: float) -> list[Any]:
    """ARGV 13-18 of the admission script."""
    if meter is None:
        return ["0", 0, "", "", "", ""]
    head, tail = meter.event(plan_id, admitted_at)
    return ["1", meter.rows, head, tail, meter.confirm or b"", meter.stream]


class Unconfirmed(redis.RedisError):
    """An admission that may have metered its call was never answered, however often tried."""


def run_until_answered(run: Callable[[], Any], *, give_up_at: float) -> Any:
    """``run()`` (an admission that meters a hit), tried again while Redis does not answer
    it until ``give_up_at`` (unix seconds), then ``Unconfirmed``. NOTE: a try whose reply
    was lost (a stall, a connection dropped) may have metered the call: a 503 then would
    bill a call never answered, so it is tried again, and the script's mark makes a try
    that finds it metered answer so. Tries that could not connect sent nothing: while no
    other was sent, their error is raised at once (a Redis that is down)."""
    sent = False
    while True:
        try:
            return run()
        except redis.RedisError as exc:
            # (redis-py's words for a connection it could not make.)
            sent = sent or "connecting to" not in str(exc)
            if not sent:
                raise
            if time.time() + RETRY_PAUSE_S > give_up_at:
                raise Unconfirmed(str(exc)) from exc
            logger.warning("admission of a cached answer not confirmed by Redis: trying again")
            time.sleep(RETRY_PAUSE_S)

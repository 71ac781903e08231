"""What operators see of the data plane: every worker's last report (``workers/presence.py``:
its pool and hardware price, models, batch settings, recent throughput and how busy it is),
the fleet's hardware cost per hour, and the queues and dead letters between the API and the
workers. Read from Redis only, at page or scrape time."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import redis

from finetuning.consumer import DEAD_LETTER_KEY as TRAINING_DEAD_LETTERS
from limits.services import redis_client
from metering.consumer import DEAD_LETTER_KEY as USAGE_DEAD_LETTERS
from workers.contract import CONTRACT_VERSION, USAGE_STREAM, Queue
from workers.presence import SEEN_KEY, SILENT_AFTER_BEATS, report_key
from workers.settings import MAX_PRICE_PER_HOUR

logger = logging.getLogger(__name__)

# Lists and streams between the API and the workers (Celery's Redis transport keeps a
# queue's messages in a list named after it), and where the consumers put what they could
# not use.
QUEUES: dict[str, tuple[str, str]] = {
    "inference": ("list", Queue.INFERENCE.value),
    "training": ("list", Queue.TRAINING.value),
    "training events": ("list", Queue.TRAINING_EVENTS.value),
    "usage events": ("stream", USAGE_STREAM),
    "usage dead letters": ("list", USAGE_DEAD_LETTERS),
    "training-event dead letters": ("list", TRAINING_DEAD_LETTERS),
}


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    kind: str
    state: str  # live | silent | stopped
    reported_at: datetime
    silent_for_s: float
    started_at: datetime | None
    host: str
    pid: int | None
    pool: str
    price_per_hour: Decimal | None
    currency: str
    models: list[str]
    fine_tuned_loaded: int
    activity: str | None
    texts: int
    forwards: int
    texts_per_forward: float | None
    padding_pct: float | None
    texts_per_s: float | None
    busy_pct: float | None
    settings: str
    contract_differs: bool


@dataclass(frozen=True, slots=True)
class FleetRow:
    kind: str
    pool: str
    currency: str
    live: int
    per_hour: Decimal


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _price(value: Any) -> Decimal | None:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    # (A report is any worker's word: 1E+999999999 made the page and /metrics a 500.)
    if price.is_finite() and 0 <= price <= MAX_PRICE_PER_HOUR:
        return price
    logger.warning("a worker reports a price per hour past any real one: %r", value)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _row(name: str, seen: float, report: dict[str, Any], now: float) -> WorkerRow:
    queues = [str(q) for q in report.get("queues") or []]
    kind = next((q for q in ("inference", "training") if q in queues), ",".join(queues) or "?")
    silent_for = max(0.0, now - seen)
    state = "stopped" if report.get("state") == "stopped" else "live"
    interval = _number(report.get("interval_s")) or 5.0
    if state == "live" and silent_for > SILENT_AFTER_BEATS * interval:
        state = "silent"
    totals = report.get("totals") or {}
    recent = report.get("recent") or {}
    texts, forwards = int(totals.get("texts") or 0), int(totals.get("forwards") or 0)
    padded = totals.get("padded_tokens") or 0
    settings = (
        f"{report.get('model_threads')} model thread(s) x {report.get('torch_threads')}, "
        f"batches up to {report.get('batches') or '?'}, wait {report.get('max_wait_ms')} ms"
    )
    return WorkerRow(
        name=name, kind=kind, state=state, reported_at=cast(datetime, _time(seen)),
        silent_for_s=silent_for, started_at=_time(report.get("started_at")),
        host=str(report.get("host", "")), pid=report.get("pid"),
        pool=str(report.get("pool", "")), price_per_hour=_price(report.get("price_per_hour")),
        currency=str(report.get("currency", "")),
        models=[str(m) for m in report.get("models") or []],
        fine_tuned_loaded=int(report.get("fine_tuned_loaded") or 0),
        activity=report.get("activity"), texts=texts, forwards=forwards,
        texts_per_forward=texts / forwards if forwards else None,
        padding_pct=100 * (1 - (totals.get("real_tokens") or 0) / padded) if padded else None,
        # NOTE: what a training worker does is its job (``activity``); its counters are
        # those of the inference batchers it also holds, idle there.
        texts_per_s=_number(recent.get("texts_per_s")) if kind == "inference" else None,
        busy_pct=_number(recent.get("busy_pct")) if kind == "inference" else None,
        settings=settings, contract_differs=report.get("contract") != CONTRACT_VERSION,
    )  # fmt: skip


def workers_seen(client: redis.Redis | None = None) -> list[WorkerRow]:
    """Every worker that reported within the last hour, live ones first, then by kind and
    name. A report that cannot be read is left out (and logged)."""
    client = client or redis_client()
    seen = cast(list[tuple[bytes, float]], client.zrange(SEEN_KEY, 0, -1, withscores=True))
    if not seen:
        return []
    names = [raw.decode(errors="replace") for raw, _ in seen]
    reports = cast(list[bytes | None], client.mget([report_key(name) for name in names]))
    # Redis's clock, which the workers stamp their reports with: hosts' clocks may disagree.
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    rows = []
    for name, (_, at), raw in zip(names, seen, reports, strict=True):
        if raw is None:  # expired: the next beat of any worker drops the name
            continue
        try:
            rows.append(_row(name, at, json.loads(raw), now))
        except Exception:  # one unreadable report must not hide the others
            logger.warning("worker %r: unreadable presence report", name, exc_info=True)
    order = {"live": 0, "silent": 1, "stopped": 2}
    return sorted(rows, key=lambda r: (order[r.state], r.kind, r.name))


def live_counts(rows: list[WorkerRow]) -> dict[tuple[str, str], int]:
    """Live workers by (kind, pool)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        if row.state == "live":
            counts[(row.kind, row.pool)] += 1
    return dict(sorted(counts.items()))


def fleet_cost(rows: list[WorkerRow]) -> list[FleetRow]:
    """Live workers and what their hardware costs per hour, by kind, pool and currency (a
    price a report does not say in a form read here counts as 0, and is logged)."""
    fleet: dict[tuple[str, str, str], list[Decimal]] = defaultdict(list)
    for row in rows:
        if row.state == "live":
            if row.price_per_hour is None:
                logger.warning("worker %r reports no usable price per hour", row.name)
            fleet[(row.kind, row.pool, row.currency)].append(row.price_per_hour or Decimal(0))
    return [
        FleetRow(kind, pool, currency, live=len(prices), per_hour=sum(prices, Decimal(0)))
        for (kind, pool, currency), prices in sorted(fleet.items())
    ]


def queue_depths(client: redis.Redis | None = None) -> dict[str, int]:
    """Entries waiting in each queue of ``QUEUES`` (a usage event stays in its stream until
    the ledger has it)."""
    pipe = (client or redis_client()).pipeline(transaction=False)
    for kind, key in QUEUES.values():
        if kind == "stream":
            pipe.xlen(key)
        else:
            pipe.llen(key)
    return {name: int(depth) for name, depth in zip(QUEUES, pipe.execute(), strict=True)}

"""The platform-side usage consumer: reads workers' usage events from the Redis stream
``usage:events`` as consumer group ``ledger`` and appends them to the ledger in bulk.

At least once: entries are acknowledged (and deleted from the stream) only after the
transaction that stored them commits, so a crash re-delivers them, and the ledger's unique
event id turns the re-delivery into a no-op. A consumer's name is stable (the host's name
unless given), so a restarted one stores what it read before and never acknowledged at
once; entries a consumer that is gone for good left unacknowledged are claimed by a live one
after ``STALE_MS``. Events that can never be stored go to a dead-letter list in Redis
(``usage:dead``) for an operator instead of blocking the stream.

Redis going away (restarting, stalled) does not end the consumer: it logs a warning, waits
(``Backoff``), joins the group again (making it if Redis lost it) and carries on.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.backoff import Backoff
from workers import liveness
from workers.contract import USAGE_GROUP, USAGE_STREAM

from .metrics import USAGE_EVENTS
from .services import usage_record_bulk

logger = logging.getLogger(__name__)

DEAD_LETTER_KEY = "usage:dead"
STALE_MS = 60_000
CLAIM_EVERY_S = 10.0
# While a batch lingers for the rest of its flush interval, a stop is looked for this often.
LINGER_SLICE_S = 0.05
# A group member silent this long with nothing pending is a consumer that is gone (a live
# one reads every flush interval): forgotten when a consumer starts, so that dead names do
# not pile up in the group.
FORGET_IDLE_MS = 3_600_000

# Removes a consumer from the group only if it has nothing pending at that moment (XGROUP
# DELCONSUMER drops its pending entries, which nobody would then claim).
_FORGET_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

Entry = tuple[bytes, dict[bytes, bytes]]


def _decode(fields: dict[bytes, bytes]) -> Any:
    try:
        return json.loads(fields[b"event"])
    except (KeyError, ValueError):
        return {"unreadable": {k.decode(errors="replace"): v.decode(errors="replace")
                               for k, v in fields.items()}}  # fmt: skip


def default_name() -> str:
    """Stable across restarts, so that a restarted consumer re-reads its own pending entries
    at once. Two consumers on one host should be given distinct names (``--name``); sharing
    one is safe (the ledger's unique event id), but each then re-reads, when it starts, what
    the other has in hand."""
    return socket.gethostname()


class UsageConsumer:
    def __init__(
        self,
        *,
        url: str | None = None,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        name: str | None = None,
    ) -> None:
        # NOTE: one quick retry (a pooled connection that Redis closed when it restarted), not
        # redis-py's default ten: ``run`` does the waiting, and says that it does.
        self.client = redis.Redis.from_url(
            url or settings.REDIS_URL, socket_timeout=30, retry=Retry(NoBackoff(), 1)
        )
        self.batch_size = batch_size or settings.USAGE_BATCH_SIZE
        self.flush_interval = flush_interval or settings.USAGE_FLUSH_INTERVAL_S
        self.name = name or default_name()
        # Rows stored since this consumer was made, counted as soon as they commit (their
        # acknowledgement can still fail).
        self.inserted = 0
        self._claimed_at = 0.0
        self._forget = self.client.register_script(_FORGET_CONSUMER)

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _forget_gone_consumers(self) -> None:
        for consumer in self.client.xinfo_consumers(USAGE_STREAM, USAGE_GROUP):
            name = consumer["name"]
            if isinstance(name, bytes):
                name = name.decode()
            if name == self.name or consumer["pending"] or consumer["idle"] < FORGET_IDLE_MS:
                continue
            if self._forget(keys=[USAGE_STREAM], args=[USAGE_GROUP, name]) != -1:
                logger.info("usage consumer %r silent for %d s: removed from the group",
                            name, consumer["idle"] // 1000)  # fmt: skip

    def _recover_own(self) -> None:
        """Store every entry this consumer name read and never acknowledged (it was
        restarted, or lost Redis before it could acknowledge)."""
        after: str | bytes = "0"
        while entries := self._read(after, None):
            after = entries[-1][0]
            # An entry deleted from the stream while pending has nothing left to store.
            if gone := [entry_id for entry_id, fields in entries if not fields]:
                self.client.xack(USAGE_STREAM, USAGE_GROUP, *gone)
            self.flush([entry for entry in entries if entry[1]])

    def _start(self) -> None:
        """Join the group: at start, and again after Redis came back (which may have lost
        the group, or the acknowledgement of entries this consumer had in hand)."""
        self._ensure_group()
        self._forget_gone_consumers()
        self._recover_own()

    def _read(
        self, stream_id: str | bytes, block_ms: int | None, count: int | None = None
    ) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            USAGE_GROUP, self.name, {USAGE_STREAM: stream_id},
            count=count or self.batch_size, block=block_ms,
        )  # fmt: skip
        return list(reply[0][1]) if reply else []

    def _claim_stale(self) -> list[Entry]:
        """Entries another consumer read but never acknowledged (it died)."""
        self._claimed_at = time.monotonic()
        reply: Any = self.client.xautoclaim(
            USAGE_STREAM, USAGE_GROUP, self.name, min_idle_time=STALE_MS,
            start_id="0-0", count=self.batch_size,
        )  # fmt: skip
        return [entry for entry in reply[1] if entry and entry[1]]

    def flush(self, entries: list[Entry]) -> int:
        """Store the entries' events, then acknowledge them. Returns rows inserted."""
        if not entries:
            return 0
        events = [_decode(fields) for _, fields in entries]
        try:
            if not connection.in_atomic_block:
                # A long-lived process must drop connections the database has closed; but
                # a caller that holds a transaction (a test) owns its connection.
                close_old_connections()
            outcome = usage_record_bulk(events=events)
        except DatabaseError:
            # Not acknowledged: they stay pending and are read again (claimed when stale).
            logger.exception("usage batch of %d not stored; will retry", len(entries))
            time.sleep(1.0)
            return 0
        self.inserted += outcome.inserted
        liveness.beat()  # (a start that stores a long backlog, batch after batch, is live)
        USAGE_EVENTS.labels("recorded").inc(outcome.inserted)
        USAGE_EVENTS.labels("duplicate").inc(outcome.duplicates)
        USAGE_EVENTS.labels("rejected").inc(len(outcome.rejected))
        # NOTE: should Redis fail from here on, the entries stay pending (read again when
        # Redis is back: ``_start``) and their second storing is a no-op.
        pipe = self.client.pipeline(transaction=False)
        for event, why in outcome.rejected:
            logger.error("usage event rejected (%s): %r", why, event)
            pipe.rpush(DEAD_LETTER_KEY, json.dumps({"event": event, "why": why}, default=str))
        ids = [entry_id for entry_id, _ in entries]
        pipe.xack(USAGE_STREAM, USAGE_GROUP, *ids)
        pipe.xdel(USAGE_STREAM, *ids)
        pipe.execute()
        return outcome.inserted

    def _consume_once(self, should_stop: Callable[[], bool], *, until_idle: bool) -> bool:
        """Read one batch (up to ``batch_size``, or what came within one flush interval, once
        something came) and store it. False when ``until_idle`` and nothing came."""
        buffer: list[Entry] = []
        if time.monotonic() - self._claimed_at > CLAIM_EVERY_S:
            buffer += self._claim_stale()
        deadline = time.monotonic() + self.flush_interval
        if len(buffer) < self.batch_size and not should_stop():
            entries = self._read(">", max(int(self.flush_interval * 1000), 1))
            buffer += entries
            if entries and len(buffer) < self.batch_size:
                # NOTE: what else comes within the interval is read once at its end, not
                # as each event arrives: a read (a round trip and its reply) for each cost
                # ~0.1 ms of CPU an event under a steady trickle (bench_cpu.py, 32 clients
                # at a 1 s interval: 0.40 ms of this process's CPU a call, 0.28 with one).
                while (left := deadline - time.monotonic()) > 0 and not should_stop():
                    time.sleep(min(left, LINGER_SLICE_S))
                buffer += self._read(">", None, count=self.batch_size - len(buffer))
        if not buffer and until_idle:
            return False
        self.flush(buffer)
        return True

    def run(
        self, *, should_stop: Callable[[], bool] = lambda: False, until_idle: bool = False
    ) -> int:
        """Consume until ``should_stop()`` (or, with ``until_idle``, until the stream has
        nothing new for one flush interval). Returns rows inserted."""
        inserted = self.inserted
        backoff = Backoff()
        joined = False
        failing_since: float | None = None
        while not should_stop():
            # Each turn reads for at most a flush interval, so an idle consumer beats too; a
            # turn stuck (a store waiting on a lock, a dead connection) stops the beats and
            # its liveness probe restarts it (workers/liveness.py, deploy/).
            liveness.beat()
            try:
                if not joined:
                    self._start()
                    joined = True
                more = self._consume_once(should_stop, until_idle=until_idle)
            except redis.RedisError as exc:
                # Redis restarting (ConnectionError), stalled past the socket timeout
                # (TimeoutError), or back without our group (ResponseError NOGROUP): what
                # was read and not acknowledged stays pending, and is read again on joining.
                joined = False
                failing_since = failing_since or time.monotonic()
                delay = backoff.delay()
                logger.warning("usage consumer: Redis error (%s: %s); retrying in %.1f s",
                               type(exc).__name__, exc, delay)  # fmt: skip
                backoff.wait(delay, should_stop)
                continue
            if failing_since is not None:
                logger.info("usage consumer: Redis is back after %.1f s",
                            time.monotonic() - failing_since)  # fmt: skip
                failing_since = None
                backoff.reset()
            if not more:
                break
        return self.inserted - inserted

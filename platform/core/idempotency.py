"""``Idempotency-Key`` on POST: same key + same body replays the first response (and bills
once), or, after a failure, runs again under the first attempt's request id; same key +
another body is 409 whatever became of the first; a key still being worked on is 409 too."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from tenants.models import Tenant

from .errors import Conflict, InvalidRequest
from .ids import new_id
from .models import IdempotencyRecord

MAX_KEY_LENGTH = 255
KEY_REUSED = (
    "Keys for idempotent requests can only be used with the same parameters they were first "
    "used with. Try using a key other than '{key}' if you meant to execute a different request."
)
# A request holding its key usually finishes within a second; one whose process died holds
# it until its lock window ends (INFERENCE_TIMEOUT_S + 30 s).
RETRY_SOON = {"Retry-After": "1"}
KEY_IN_USE = (
    "There is currently another in-progress request using this Idempotency-Key ('{key}'). "
    "Retry after it has finished."
)


@dataclass(frozen=True)
class Outcome:
    record: IdempotencyRecord
    replay: bool
    retry: bool = False  # an earlier attempt with this key and body did not complete


def _canonical(value: Any) -> Any:
    """JSON-able form of a request's data; an uploaded file counts by its content (hash)
    and its name (a dataset keeps its file's name), so another file under the same name, or
    the same bytes under another name, is another request."""
    if hasattr(value, "chunks") and hasattr(value, "seek"):
        digest = hashlib.sha256()
        for chunk in value.chunks():
            digest.update(chunk)
        value.seek(0)
        return {"file_sha256": digest.hexdigest(), "name": getattr(value, "name", None)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def request_fingerprint(*, method: str, path: str, data: Any) -> str:
    if hasattr(data, "dict"):  # a multipart QueryDict: one value per field, files included
        data = data.dict()
    body = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{body}".encode()).hexdigest()


def _lock_window() -> timedelta:
    return timedelta(seconds=settings.INFERENCE_TIMEOUT_S + 30)


def _valid(key: str) -> bool:
    """1 to 255 printable ASCII characters. NOTE: granian hands the app an empty value for a
    header holding other bytes (a UTF-8 "é" arrives as ""), so a key outside ASCII could not
    be told apart from another one: refused, whatever server runs the app."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


def idempotency_replayable(*, tenant: Tenant, livemode: bool, key: str | None) -> bool:
    """Whether a POST under ``key`` would be answered from its record: a completed response
    replayed, or a 409 ``idempotency_key_in_use`` while the first attempt runs. Read on
    a refusal of admission: such an answer runs and bills nothing, so it is held to the rate
    limit only, not to the quota, the concurrency cap or an unpaid subscription (the call it
    replays was answered and billed when that was allowed; a duplicate of one in flight was
    answered 402 or 429 for the quota or the slot its own first attempt held)."""
    if key is None or not _valid(key):
        return False
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.IDEMPOTENCY_TTL_S)
    records = IdempotencyRecord.objects.for_tenant(tenant).filter(livemode=livemode, key=key)
    completed = Q(state=IdempotencyRecord.State.COMPLETED, created_at__gte=cutoff)
    running = Q(state=IdempotencyRecord.State.IN_PROGRESS, locked_until__gt=now)
    return records.filter(completed | running).exists()


def idempotency_begin(
    *, tenant: Tenant, livemode: bool, key: str, fingerprint: str, request_id: str
) -> Outcome:
    if not _valid(key):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    now = timezone.now()
    try:
        with transaction.atomic():
            record = IdempotencyRecord.objects.create(
                tenant=tenant,
                livemode=livemode,
                key=key,
                fingerprint=fingerprint,
                request_id=request_id,
                state=IdempotencyRecord.State.IN_PROGRESS,
                locked_until=now + _lock_window(),
            )
        return Outcome(record=record, replay=False)
    except IntegrityError:
        pass

    records = IdempotencyRecord.objects.for_tenant(tenant)
    record = records.get(livemode=livemode, key=key)
    expired = record.created_at < now - timedelta(seconds=settings.IDEMPOTENCY_TTL_S)
    if not expired and record.fingerprint != fingerprint:
        # Whatever became of the first attempt (API.md: another body is 409): one that
        # failed may have run all the same (a 503 worker_timeout whose worker answered late
        # is billed under its request id), and another body under its key would be a second
        # call that the client takes for a retry of the first. Said while the first runs
        # too: "in use" with a Retry-After invited a retry that could only be refused.
        raise Conflict(KEY_REUSED.format(key=key), code="idempotency_key_reused")
    if record.state == IdempotencyRecord.State.IN_PROGRESS and record.locked_until > now:
        raise Conflict(
            KEY_IN_USE.format(key=key), code="idempotency_key_in_use", headers=RETRY_SOON
        )
    if record.state == IdempotencyRecord.State.COMPLETED and not expired:
        return Outcome(record=record, replay=True)

    # Released or stale with this very body, or expired: claim it, atomically against a
    # concurrent retry.
    same_request = not expired
    claimed_id = record.request_id if same_request else new_id("req")
    claimed = records.filter(pk=record.pk, state=record.state, locked_until=record.locked_until)
    if not claimed.update(
        state=IdempotencyRecord.State.IN_PROGRESS,
        locked_until=now + _lock_window(),
        fingerprint=fingerprint,
        request_id=claimed_id,
        **({} if same_request else {"created_at": now}),
    ):
        raise Conflict(
            KEY_IN_USE.format(key=key), code="idempotency_key_in_use", headers=RETRY_SOON
        )
    record.refresh_from_db()
    return Outcome(record=record, replay=False, retry=same_request)


def _without_secret(body: Any) -> Any:
    """What is kept for a replay: an API key's secret is shown once and stored only as a
    hash (API.md), so a replayed creation or rotation carries ``"secret": null``."""
    if isinstance(body, dict) and body.get("secret") is not None:
        return {**body, "secret": None}
    return body


def idempotency_finish(*, record: IdempotencyRecord, status_code: int, body: Any) -> None:
    """Keep a success for replay; release anything else so the client can retry it."""
    records = IdempotencyRecord.objects.for_tenant(record.tenant_id).filter(pk=record.pk)
    if 200 <= status_code < 300:
        records.update(
            state=IdempotencyRecord.State.COMPLETED,
            status_code=status_code,
            response_body=json.dumps(_without_secret(body), cls=JSONEncoder, ensure_ascii=False),
        )
    else:
        records.update(state=IdempotencyRecord.State.RELEASED, locked_until=timezone.now())


def idempotency_purge() -> int:
    """Delete the records no replay can use any more (older than ``IDEMPOTENCY_TTL_S`` and
    their lock window); returns how many. Run hourly by the platform worker's beat."""
    cutoff = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_TTL_S) - _lock_window()
    deleted, _ = IdempotencyRecord.objects.unscoped().filter(created_at__lt=cutoff).delete()
    return int(deleted)

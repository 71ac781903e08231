"""The one base view every tenant-facing endpoint uses: the tenant comes from the API key,
never from ambient state, and every POST honours ``Idempotency-Key``."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import NotAcceptable, ParseError, UnsupportedMediaType
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys.authentication import KeyPrincipal, principal
from apikeys.models import ApiKey
from apikeys.services import KeyCheck, api_key_forget, key_check_confirmed
from limits.hits import HitMeter
from limits.holds import hold_rekey
from limits.services import TOKEN_TAKEN_BY, Admission, limits_admit, limits_settle
from tenants.models import Tenant

from .body_slots import body_stream_guard, body_stream_release
from .errors import APIError
from .idempotency import (
    idempotency_begin,
    idempotency_finish,
    idempotency_replayable,
    request_fingerprint,
)
from .models import IdempotencyRecord
from .negotiation import JSONFirstNegotiation
from .refusals import refuse_content_coding, refuse_nul, refuse_query

logger = logging.getLogger(__name__)

# Admission's refusals that a replay of an answered call is not subject to.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
REPLAY_ADMITTED = frozenset({"quota_exceeded", "subscription_unpaid", "concurrency_limited"})
# What reading a request's body can raise (the parsers' 400s and 415): kept while admission
# counts it, and raised once it is admitted (``_prefetch``, ``_admit``).
BODY_ERRORS = (ParseError, UnsupportedMediaType, APIError)


class _Replay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record


class _StaleKey(Exception):
    """The key came from this process's key cache and has changed since (revoked, rotated,
    edited): the request is authenticated again from the database."""


def _key_check(request: Request) -> KeyCheck | None:
    # ``_user``, not ``user``: after a failed authentication, ``user`` would authenticate again.
    user = getattr(request, "_user", None)
    return user.check if isinstance(user, KeyPrincipal) else None


class TenantAPIView(APIView):
    content_negotiation_class = JSONFirstNegotiation
    required_scopes: dict[str, str] = {}
    _idempotency: IdempotencyRecord | None = None
    # True when this POST retries an earlier attempt (same Idempotency-Key and body) that did
    # not complete: the work may have been done after all, under the same request id.
    is_retry = False
    # Views whose POST costs money (inference, training) are refused while the subscription
    # is unpaid beyond its grace period.
    billable = False
    _admission: Admission | None = None
    _token_taken = False  # its rate-limit token: an admission run again takes none
    _replayed = False
    # Why the body cannot be read, found while counting its inputs for admission: raised
    # once admitted, so the rate limit meters every request, whatever its body.
    _body_error: Exception | None = None
    # The query parameters each method takes, as its OpenAPI operation documents them
    # (tests/platform/test_ops.py holds the two equal); any other is refused by name, like
    # an unknown body parameter.
    query_parameters: dict[str, frozenset[str]] = {}

    def metered_inputs(self, request: Request) -> int:
        """Inputs this request will run, reserved against the quota when it is admitted
        (inference views override this)."""
        return 0

    def check_body(self, request: Request) -> None:
        """Raise what is wrong with this POST's body, if anything (its 400, 404 or 413).
        Called only when admission refuses the request for the quota or the concurrency
        cap: a body that could never run says what to fix, not a 402 or 429 that paying or
        waiting would not cure. (The rate limit's 429 and an unpaid subscription's 402 stay
        first: see ``_initial``.)"""

    def admission_prefetch(self, request: Request) -> Sequence[str]:
        """Redis keys this request will read, read with its admission in one round trip
        (``Admission.prefetched``); the classify view names its result-cache rows."""
        return ()

    def admission_meter(
        self, request: Request, rows: int, confirm: bytes | None
    ) -> HitMeter | None:
        """What admission may meter for this request if the first ``rows`` prefetched keys
        all hold values (``limits.hits``): the classify view's usage event for a call answered
        from the cache. Asked only of a POST that nothing can refuse after admission but its
        own body's checks (no Idempotency-Key, query or body error)."""
        return None

    @property
    def tenant(self) -> Tenant:
        return principal(self.request).tenant

    @property
    def api_key(self) -> ApiKey:
        return principal(self.request).api_key

    @property
    def idempotent(self) -> bool:
        """Whether this POST carries an Idempotency-Key (a retry may reuse its request id)."""
        return self._idempotency is not None

    @property
    def admission(self) -> Admission | None:
        """What admission decided for the request being handled (None once it is settled)."""
        return self._admission

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """DRF's checks, then admission and ``Idempotency-Key``. A key from this process's
        key cache is confirmed by the admission round trip (``KeyCheck``), or, when the
        request is refused before it, right then: a revoked key is a 401 whatever else is
        wrong with the request."""
        try:
            self._initial(request, *args, **kwargs)
        except _StaleKey:
            self._authenticate_again(request)
            self._initial(request, *args, **kwargs)
        except _Replay:
            raise  # after admission: the key was confirmed
        except Exception:  # a refusal (400, 403, 429...) or a failure, before admission's
            check = _key_check(request)
            if check is None or key_check_confirmed(check):
                raise
            self._authenticate_again(request)
            self._initial(request, *args, **kwargs)

    def _authenticate_again(self, request: Request) -> None:
        """From the database this time: a revoked or rotated-out key raises the 401. An
        admission already made for the request is handed back first."""
        if self._admission is not None:
            admission, self._admission = self._admission, None
            limits_settle(admission, succeeded=False)
        check = _key_check(request)
        if check is not None:
            api_key_forget(digest=check.digest)
        request._authenticate()  # type: ignore[attr-defined]  # DRF's own, as `request.user` calls it

    def _initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if request.method in BODY_METHODS:  # authenticated: its tenant's slots (body_slots)
            body_stream_guard(request._request, self.tenant.pk)
        try:
            refuse_content_coding(request)
        except APIError as exc:  # as a body's errors: after admission (a throttled key's 429)
            self._body_error = exc
        post = request.method == "POST"
        # NOTE: META, not ``request.headers``: that builds a dict of every header on first use
        # (7 µs a request, ~1 % of a cache hit in the API), for the one this view reads.
        key = request.META.get("HTTP_IDEMPOTENCY_KEY") if post else None
        check = _key_check(request)
        prefetch = [*(self._prefetch(request) if post and self._body_error is None else ())]
        meter = None
        if prefetch and key is None and not request.META.get("QUERY_STRING") and not kwargs:
            confirm = check.generation if check is not None else None
            meter = self.admission_meter(request, len(prefetch), confirm)
        if check is not None:
            prefetch.append(check.redis_key)  # the cached key's generation, read with it
        # Rate limits, concurrency cap and quota: one Redis round trip, before any work.
        replaying = False
        try:
            admission = self._admission = self._admit(
                request, runs=post, prefetch=prefetch, meter=meter
            )
        except APIError as refused:
            # A replay runs and bills nothing: refused only for the rate limit, not for the
            # quota, an unpaid subscription or the concurrency cap; nor is a duplicate of an
            # attempt still running (a 409). Looked up only on such a refusal.
            if refused.code not in REPLAY_ADMITTED:
                raise
            replayable = key is not None and idempotency_replayable(
                tenant=self.tenant, livemode=self.api_key.livemode, key=key
            )
            if not replayable:
                if post and refused.code != "subscription_unpaid":
                    # (Not for an unpaid subscription: that is decided before the rate
                    # limit, and the check would then run unthrottled.)
                    if self._body_error is not None:  # (the rate limit's 429 raised above)
                        raise self._body_error from None
                    self.check_body(request)
                raise
            replaying = True
            admission = self._admission = self._admit(request, runs=False, prefetch=prefetch)
        if check is not None and not key_check_confirmed(check, admission.prefetched):
            self._admission = None
            limits_settle(admission, succeeded=False)
            raise _StaleKey
        # After admission, as a body's errors are: a throttled key gets its 429 whatever its
        # query says, and a refused query carries the RateLimit headers like any answer.
        if self._body_error is not None:
            raise self._body_error
        refuse_query(self, request)
        refuse_nul(kwargs, request.query_params)
        if key is None:
            return
        outcome = idempotency_begin(
            tenant=self.tenant,
            livemode=self.api_key.livemode,
            key=key,
            fingerprint=request_fingerprint(method="POST", path=request.path, data=request.data),
            request_id=request._request.request_id,  # type: ignore[attr-defined]
        )
        # Retries never mint a new id: the response (and any usage) keeps the first one's,
        # and so does its quota reservation's hold.
        request._request.request_id = outcome.record.request_id  # type: ignore[attr-defined]
        hold_rekey(admission, request_id=outcome.record.request_id)
        if outcome.replay:
            raise _Replay(outcome.record)
        self._idempotency = outcome.record
        self.is_retry = outcome.retry
        if replaying:  # its record expired or was released in between: a new request
            self._admission = None
            limits_settle(admission, succeeded=False)
            self._admission = self._admit(request, runs=True, prefetch=())

    def _prefetch(self, request: Request) -> Sequence[str]:
        """``admission_prefetch``, or none for a body that cannot be read (kept for after
        admission, as in ``_admit``)."""
        try:
            return self.admission_prefetch(request)
        except BODY_ERRORS as exc:
            self._body_error = exc
            return ()

    def _admit(
        self,
        request: Request,
        *,
        runs: bool,
        prefetch: Sequence[str],
        meter: HitMeter | None = None,
    ) -> Admission:
        """``limits_admit`` for this request; ``runs``: a POST that will do (and may bill)
        work, which reserves its inputs and is refused for an unpaid subscription.
        ``meter``: what to meter in the same round trip (``admission_meter``)."""
        inputs = 0
        if runs and self._body_error is None:
            try:
                inputs = self.metered_inputs(request)
            except BODY_ERRORS as exc:
                # Bad JSON, a member twice: admitted for the rate limit alone, then refused
                # with this (a throttled key could send any number of 16 MB such bodies).
                self._body_error = exc
        try:
            admission = limits_admit(
                api_key=self.api_key,
                request_id=request._request.request_id,  # type: ignore[attr-defined]
                inputs=inputs,
                billable=self.billable and runs,
                prefetch=prefetch,
                token_taken=self._token_taken,
                hit_meter=meter if self._body_error is None else None,
            )
        except APIError as refused:
            self._token_taken |= refused.code in TOKEN_TAKEN_BY
            raise
        self._token_taken = True
        return admission

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        try:
            return super().perform_content_negotiation(request, force)
        except NotAcceptable:
            # Who asks comes first: without a valid key this is a 401, whatever it accepts
            # (DRF negotiates before it authenticates).
            principal(request)
            raise

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """DRF's, and what an unhandled exception leaves behind is handed back before
        Django's 500 handler answers: DRF re-raises it without ``finalize_response``, so the
        admission's concurrency slot and reserved inputs would be held until they expire, and
        the Idempotency-Key locked for its window (every retry a 409)."""
        try:
            return super().dispatch(request, *args, **kwargs)
        except Exception:
            self._abandon()
            raise
        finally:
            body_stream_release(request)

    def _abandon(self) -> None:
        """Settle a failed request's admission as failed and release its Idempotency-Key
        (a 500 is never kept for replay: a retry runs again). NOTE: each is cleared before
        it is handed back, as ``finalize_response`` does, so neither is settled twice; a
        failure here is logged, never raised over the request's own."""
        if self._admission is not None:
            admission, self._admission = self._admission, None
            try:
                limits_settle(admission, succeeded=False)
            except Exception:
                logger.exception("could not settle the admission of a failed request")
        if self._idempotency is not None:
            record, self._idempotency = self._idempotency, None
            try:
                idempotency_finish(record=record, status_code=500, body=None)
            except Exception:
                logger.exception("could not release the Idempotency-Key of a failed request")

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Replay):
            self._replayed = True
            body = exc.record.response_body
            return Response(
                None if body is None else json.loads(body),
                status=exc.record.status_code or 200,
                headers={"Idempotent-Replayed": "true"},
            )
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self._admission is not None:
            admission, self._admission = self._admission, None
            for name, value in admission.headers.items():
                response[name] = value
            # A replay ran nothing: its reservation is handed back like a failure's.
            answered = 200 <= response.status_code < 300 and not self._replayed
            limits_settle(admission, succeeded=answered)
        if self._idempotency is not None:
            record, self._idempotency = self._idempotency, None
            _finish_recorded(record, response)
        return response


# Tries to record an Idempotency-Key's outcome, and the pause before each try after the first.
FINISH_RETRY_PAUSES_S = (0.0, 0.25, 1.0)


def _finish_recorded(record: IdempotencyRecord, response: Any) -> None:
    """Record the outcome, trying again on a fresh connection (a connection the database
    dropped is one failure; a replay needs the record, or a retry of a create makes a second
    key or job). If it still cannot be written the answer stands anyway: a classification
    answered is billed and must reach its caller (it was a 500); the key stays locked for its
    window, and a retry after it runs again under the same request id (billed once).
    On SQLite there is no connection to lose, and a lock already held the try for the whole
    busy timeout: one try."""
    pauses = FINISH_RETRY_PAUSES_S if connection.vendor != "sqlite" else (0.0,)
    for attempt, pause in enumerate(pauses):
        if attempt:
            time.sleep(pause)
            if not connection.in_atomic_block:
                with contextlib.suppress(DatabaseError):
                    connection.close()  # the next query opens a new one
        try:
            idempotency_finish(record=record, status_code=response.status_code, body=response.data)
            return
        except (OperationalError, InterfaceError):  # the connection or the server: again
            logger.warning("Idempotency-Key outcome not recorded (try %d)", attempt + 1,
                           exc_info=True)  # fmt: skip
        except DatabaseError:  # the same again (a body the column refuses): no use trying
            break
    logger.exception("could not record the Idempotency-Key's outcome of %s", record.request_id)

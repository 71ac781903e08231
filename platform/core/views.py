"""The one base view every tenant-facing endpoint uses: the tenant comes from the API key,
never from ambient state, and every POST honours ``Idempotency-Key``."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys.authentication import principal
from apikeys.models import ApiKey
from tenants.models import Tenant

from .idempotency import idempotency_begin, idempotency_finish, request_fingerprint
from .models import IdempotencyRecord


class _Replay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record


class TenantAPIView(APIView):
    required_scopes: dict[str, str] = {}
    _idempotency: IdempotencyRecord | None = None
    # True when this POST retries an earlier attempt (same Idempotency-Key and body) that did
    # not complete: the work may have been done after all, under the same request id.
    is_retry = False

    @property
    def tenant(self) -> Tenant:
        return principal(self.request).tenant

    @property
    def api_key(self) -> ApiKey:
        return principal(self.request).api_key

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or key is None:
            return
        outcome = idempotency_begin(
            tenant=self.tenant,
            key=key,
            fingerprint=request_fingerprint(method="POST", path=request.path, data=request.data),
            request_id=request._request.request_id,  # type: ignore[attr-defined]
        )
        # Retries never mint a new id: the response (and any usage) keeps the first one's.
        request._request.request_id = outcome.record.request_id  # type: ignore[attr-defined]
        if outcome.replay:
            raise _Replay(outcome.record)
        self._idempotency = outcome.record
        self.is_retry = outcome.retry

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Replay):
            return Response(
                exc.record.response_body,
                status=exc.record.status_code or 200,
                headers={"Idempotent-Replayed": "true"},
            )
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self._idempotency is not None:
            record, self._idempotency = self._idempotency, None
            idempotency_finish(record=record, status_code=response.status_code, body=response.data)
        return response

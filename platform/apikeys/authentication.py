from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from core.errors import AuthenticationError
from tenants.models import Tenant

from . import messages
from .models import ApiKey
from .services import KeyCheck, api_key_authenticate_cached


@dataclass(frozen=True)
class KeyPrincipal:
    """``request.user`` for API calls: the tenant the key belongs to, and the key; ``check``
    when the key came from this process's key cache and is yet to be confirmed (the base
    view does it, ``core.views.TenantAPIView``)."""

    tenant: Tenant
    api_key: ApiKey
    check: KeyCheck | None = None
    is_authenticated: bool = True


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[KeyPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None  # no key: DRF's 401 missing_api_key
        if not header.strip():
            # NOTE: sent, but empty as the app sees it. granian hands a header value that is
            # not visible ASCII (a key with an "é" in it) to the app as an empty string: it
            # read as no key at all (missing_api_key, "No API key provided"), where a
            # server that passes it on as latin-1 gets the wrong key's 401 below. The same
            # 401 either way: a key was sent and it is not one.
            raise AuthenticationError(messages.INVALID_KEY, code="invalid_api_key")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError(messages.MALFORMED_KEY, code="invalid_api_key")
        key, check = api_key_authenticate_cached(secret=secret.strip())
        return KeyPrincipal(tenant=key.tenant, api_key=key, check=check), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when no key was sent.
        return 'Bearer realm="api"'


def principal(request: Any) -> KeyPrincipal:
    user = request.user
    if not isinstance(user, KeyPrincipal):
        raise AuthenticationError(messages.MISSING_KEY, code="missing_api_key")
    return user


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular how API keys are sent."""

    target_class = ApiKeyAuthentication
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sk_live_..."}

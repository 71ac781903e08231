from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.errors import AuthenticationError, PermissionError_

from . import messages
from .authentication import KeyPrincipal


class HasScope(BasePermission):
    """A view names the scope each method needs in ``required_scopes``
    (``{"GET": "inference", "DELETE": "training"}``); ``admin`` implies every scope."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, KeyPrincipal):
            raise AuthenticationError(messages.MISSING_KEY, code="missing_api_key")
        scopes: dict[str, str] = getattr(view, "required_scopes", {})
        scope = scopes.get(request.method or "GET") or scopes.get("*")
        if scope and not user.api_key.has_scope(scope):
            raise PermissionError_(
                messages.INSUFFICIENT_SCOPE.format(scope=scope), code="insufficient_scope"
            )
        return True

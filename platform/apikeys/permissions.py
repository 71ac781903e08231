from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.errors import AuthenticationError, PermissionError_
from core.refusals import served_method

from . import messages
from .authentication import KeyPrincipal


class HasScope(BasePermission):
    """A view names the scope each method needs in ``required_scopes``
    (``{"GET": "inference", "DELETE": "training"}``, ``"*"`` for every method it serves);
    ``admin`` implies every scope. HEAD needs GET's scope; OPTIONS (``Allow`` only) and a
    method the view does not serve need none: the latter's 405 says the same to every key
    (a ``"*"`` view answered an under-scoped key's PUT with a 403 where other routes said
    405: an audit)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, KeyPrincipal):
            raise AuthenticationError(messages.MISSING_KEY, code="missing_api_key")
        scopes: dict[str, str] = getattr(view, "required_scopes", {})
        method = served_method(view, request)
        scope = None if method is None else scopes.get(method) or scopes.get("*")
        if scope and not user.api_key.has_scope(scope):
            raise PermissionError_(
                messages.INSUFFICIENT_SCOPE.format(scope=scope), code="insufficient_scope"
            )
        return True

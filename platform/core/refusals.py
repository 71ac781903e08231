"""What a request to a tenant's view is refused for before any work: a compressed body, a
query parameter its method does not take or one given twice, a NUL in an id or a query."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request

from .errors import APIError, InvalidRequest, NotFound

# Query parameters whose value is an object id, like the path's.
ID_PARAMETERS = frozenset({"starting_after"})


def refuse_content_coding(request: Request) -> None:
    """A compressed body is refused rather than read as if it were JSON (``core.wsgi``)."""
    coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip()
    if not coding or coding.lower() == "identity" or request.method not in ("POST", "PUT"):
        return
    raise APIError(
        f"Content-Encoding {coding} is not supported: send the body uncompressed.",
        code="unsupported_content_encoding",
        status=415,
    )


def refuse_nul(kwargs: dict[str, Any], query: Any) -> None:
    """Ids and query parameters reach SQL: PostgreSQL cannot compare text with NUL in it.
    No object has such an id (404, as for any unknown id); other parameters are a 400."""
    for name, value in [*kwargs.items(), *query.items()]:
        if "\x00" not in str(value):
            continue
        if name in kwargs:  # the object's id in the path: ``id``, as for any unknown id
            raise NotFound("No such object.", param="id")
        if name in ID_PARAMETERS:
            raise NotFound("No such object.", param=name)
        raise InvalidRequest(
            f"{name} must not contain NUL (\\u0000) characters.",
            code="invalid_parameter",
            param=name,
        )


def served_method(view: Any, request: Request) -> str | None:
    """The method a request asks its view to serve, HEAD read as GET; None for OPTIONS
    (``Allow`` only, whichever method's query or scope) and for a method the view lacks
    (a 405 to every key and any query: DRF says so after the checks)."""
    method = "GET" if request.method == "HEAD" else (request.method or "GET")
    if method == "OPTIONS" or not hasattr(view, method.lower()):
        return None
    return method


def refuse_query(view: Any, request: Request) -> None:
    """A query parameter the method does not take (``view.query_parameters``), or one
    given twice, is a 400."""
    method = served_method(view, request)
    if method is None:
        return
    allowed = view.query_parameters.get(method, frozenset())
    unknown = next((name for name in request.query_params if name not in allowed), None)
    if unknown is not None:
        raise InvalidRequest(
            f"Received unknown parameter: {unknown}.", code="unknown_parameter", param=unknown
        )
    # ?a=1&a=2: Django keeps the last, another reader the first; neither is asked for.
    params = request.query_params
    twice = next((n for n in params if len(params.getlist(n)) > 1), None)
    if twice is not None:
        raise InvalidRequest(
            f"{twice} is given more than once.", code="duplicate_parameter", param=twice
        )

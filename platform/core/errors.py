"""The one error shape of the public API and the mapping of every failure onto it.

``{"error": {"type", "code", "message", "param"}}``: ``type`` is the class of failure
(one per HTTP status, as in API.md), ``code`` the specific reason a program can branch on.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError as DjangoOperationalError
from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

from .statement_timeout import statement_cancelled

logger = logging.getLogger(__name__)
DB_UNAVAILABLE = (
    "The database is busy or cannot be reached; retry in a few seconds (with the same"
    " Idempotency-Key, a retry is never run or billed twice)."
)
DB_TIMEOUT = (
    "The request ran longer in the database than the API allows, and was stopped: it waited"
    " on other work (retry in a while; with the same Idempotency-Key a retry is never run or"
    " billed twice), or asks for too much at once (a report over a shorter range)."
)
NO_BOUNDARY = (
    "The request body is not valid multipart/form-data: its Content-Type names no boundary"
    " (or an invalid one). Let the HTTP client build the body and its header (curl -F"
    " file=@data.jsonl; Python requests files=...)."
)
PART_HEADERS_TOO_LONG = (
    "A part of the multipart/form-data body has headers over 1,024 bytes, the most they may"
    " take: a file name that long, most often. Send the file under a shorter name."
)
# A statement past the API's statement timeout is asked again later, not at once: the same
# request may well take as long again (DATABASE_STATEMENT_TIMEOUT_MS each time).
DB_TIMEOUT_RETRY_S = 30

TYPE_BY_STATUS = {
    400: "invalid_request",
    401: "authentication",
    402: "payment_required",
    403: "permission",
    404: "not_found",
    405: "invalid_request",
    406: "invalid_request",
    409: "conflict",
    413: "too_large",
    415: "invalid_request",
    429: "rate_limited",
    500: "api_error",
    503: "overloaded",
}


class APIError(Exception):
    """Raised anywhere below a view; rendered by ``exception_handler``."""

    status = 400
    default_code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        if status is not None:
            self.status = status
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPE_BY_STATUS.get(self.status, "invalid_request")


class InvalidRequest(APIError):
    status = 400


class AuthenticationError(APIError):
    status = 401
    default_code = "invalid_api_key"


class PermissionError_(APIError):
    status = 403
    default_code = "permission_denied"


class NotFound(APIError):
    status = 404
    default_code = "resource_missing"


class Conflict(APIError):
    status = 409
    default_code = "conflict"


class TooLarge(APIError):
    status = 413
    default_code = "too_large"


class Overloaded(APIError):
    status = 503
    default_code = "overloaded"


# An error message is a sentence or two, and a param a name: one that echoes a value from the
# request (an id in the path, an unknown member's name) echoes at most this much of it.
MAX_MESSAGE_CHARS = 1000


def _capped(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "\u2026"


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "type": TYPE_BY_STATUS.get(status, "invalid_request"),
            "code": code,
            "message": _utf8(_capped(message)),
            "param": None if param is None else _utf8(_capped(param)),
        }
    }


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (``"\ud800"`` in JSON, which
    Python's json reads) echoed from a request, as an unknown member's name or a value that
    is not a choice, is written as its escape. It failed the response's encoding: a 500."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str, str]:
    """Walk DRF's nested error detail to the first leaf; return (param, code, message)
    with ``param`` in the dotted/indexed form clients know (``inputs[3]``, ``examples[0].text``)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key in ("non_field_errors", "__all__"):
                return _first_validation_error(value, path)
            if isinstance(key, int):  # ListField/DictField report children by position
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}" if path else str(key)
            return _first_validation_error(value, sub)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                if not value:
                    continue
                # DRF lists child errors by position; errors on the field itself are strings.
                return _first_validation_error(value, f"{path}[{index}]")
            return _first_validation_error(value, path)
        return (path or None, "invalid", "Invalid request.")
    code = getattr(detail, "code", "invalid") or "invalid"
    return (path or None, str(code), str(detail))


# DRF's messages speak of "this field"; a client reading one error of many needs its name.
_THIS_FIELD = (
    (re.compile(r"^This field is required\.$"), "Missing required parameter: {param}."),
    (re.compile(r"^Ensure this field has at least (\d+) elements?\.$"),
     "{param} must hold at least {0} item(s)."),
    (re.compile(r"^Ensure this field has no more than (\d+) elements?\.$"),
     "{param} must hold at most {0} item(s)."),
    (re.compile(r"^Ensure this field has at least (\d+) characters?\.$"),
     "{param} must be at least {0} character(s) long."),
    (re.compile(r"^Ensure this field has no more than (\d+) characters?\.$"),
     "{param} must be at most {0} character(s) long."),
    (re.compile(r"^Ensure this value is (.+)\.$"), "{param} must be {0}."),
    (re.compile(r"^This field (.+)$"), "{param} {0}"),
)  # fmt: skip


def _named(message: str, param: str | None) -> str:
    """DRF's message about "this field" said of ``param``; any other message that does not
    begin with it, prefixed with it (``inputs[0]: Must be a string.``)."""
    if not param:
        return message
    for pattern, template in _THIS_FIELD:
        match = pattern.match(message)
        if match:
            named = template.format(*match.groups(), param=param)
            return re.sub(r"\b1 (\w+)\(s\)", r"1 \1", named).replace("(s)", "s")
    return message if message.startswith(param) else f"{param}: {message}"


def _drf_error(exc: drf.APIException) -> tuple[int, str, str, str | None]:
    status = exc.status_code
    if isinstance(exc, drf.ValidationError):
        param, code, message = _first_validation_error(exc.detail)
        if code in ("invalid", "required", "null", "blank", "not_a_list", "empty"):
            code = {"required": "missing_parameter"}.get(code, "invalid_parameter")
        return 400, code, _named(message, param), param
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return 401, "missing_api_key", str(exc.detail), None
    if isinstance(exc, drf.PermissionDenied):
        return 403, "permission_denied", str(exc.detail), None
    if isinstance(exc, drf.NotFound):
        return 404, "resource_missing", str(exc.detail), None
    if isinstance(exc, drf.ParseError):
        if str(exc.detail).startswith("Multipart form parse error"):  # DRF's MultiPartParser
            message = f"The request body is not valid multipart/form-data: {exc.detail}"
            if "Invalid boundary" in str(exc.detail):  # (Django's words, naming None)
                message = NO_BOUNDARY
            if "max total header size" in str(exc.detail):  # (Django's words)
                return 400, "invalid_multipart", PART_HEADERS_TOO_LONG, "file"
            return 400, "invalid_multipart", message, None
        return 400, "invalid_json", f"The request body is not valid JSON: {exc.detail}", None
    if isinstance(exc, drf.UnsupportedMediaType):
        return 415, "unsupported_media_type", str(exc.detail), None
    if isinstance(exc, drf.MethodNotAllowed):
        return 405, "method_not_allowed", str(exc.detail), None
    if isinstance(exc, drf.NotAcceptable):
        return 406, "not_acceptable", str(exc.detail), None
    if isinstance(exc, drf.Throttled):
        return 429, "rate_limited", str(exc.detail), None
    return status, "invalid_request", str(exc.detail), None


# SQLite's OperationalErrors that pass: a lock held past the busy timeout, a file it could not
# open or write for the moment. Others ("no such table": a migration not run) are bugs: 500.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


def _transient(exc: DjangoOperationalError) -> bool:
    """Whether the database's refusal is one a retry may get past: on PostgreSQL every
    OperationalError (a lost or refused connection, a lock or statement timeout; a missing
    table is a ProgrammingError there), on SQLite the ones in ``_SQLITE_TRANSIENT``."""
    if connection.vendor != "sqlite":
        return True
    return any(word in str(exc).lower() for word in _SQLITE_TRANSIENT)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error leaves in the contract's shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, APIError):
        status, code, message, param = exc.status, exc.code, exc.message, exc.param
        headers = exc.headers
    elif isinstance(exc, Http404):
        status, code, message, param = 404, "resource_missing", "No such object.", None
    elif isinstance(exc, DjangoPermissionDenied):
        status, code, message, param = 403, "permission_denied", "Permission denied.", None
    elif isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        status, code, message, param = (
            413,
            "request_too_large",
            f"The request body is over {limit:,} bytes. Text sent as UTF-8 rather than as \\u"
            " escapes takes less room.",
            None,
        )
    elif isinstance(exc, DjangoOperationalError) and _transient(exc):
        # The database is locked past its busy timeout (SQLite, another writer), or cannot be
        # reached: the client's to retry (a 500 said the request was wrong, or we were).
        # (A statement past the API's statement timeout is one: core.statement_timeout.)
        logger.warning("database unavailable for %s: %r", context.get("view"), exc)
        status, code, message, param = 503, "database_unavailable", DB_UNAVAILABLE, None
        headers = {"Retry-After": "2"}
        if statement_cancelled(exc):
            code, message = "database_timeout", DB_TIMEOUT
            headers = {"Retry-After": str(DB_TIMEOUT_RETRY_S)}
    elif isinstance(exc, drf.APIException):
        status, code, message, param = _drf_error(exc)
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf.Throttled) and wait is not None:
            headers["Retry-After"] = str(int(wait) + 1)
    else:
        # A real bug: Django's 500 handler answers (in our shape, see below), after
        # ``TenantAPIView.dispatch`` has handed back the request's admission and key.
        return None
    if status == 401:  # RFC 9110: a 401 names the scheme that would be accepted
        headers = {**headers, "WWW-Authenticate": 'Bearer realm="api"'}
    return Response(error_body(status, code, message, param), status=status, headers=headers)


def json_error_view(status: int, code: str, message: str) -> Any:
    def view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
        return JsonResponse(error_body(status, code, message), status=status)

    return view


handler400 = json_error_view(400, "bad_request", "The request could not be understood.")
handler403 = json_error_view(403, "permission_denied", "Permission denied.")
handler404 = json_error_view(404, "resource_missing", "No such route.")
handler500 = json_error_view(
    500, "internal_error", "Something went wrong on our side; it has been logged."
)


def read_only_route(view: Any) -> Any:
    """For the routes outside the API's views (probes, metrics, docs): GET and HEAD reach
    the view; OPTIONS is 200 with ``Allow``; any other method is a 405 in the error shape
    (it was Django's HTML CSRF page for a POST, and a 500 for OPTIONS on the docs)."""
    allow = "GET, HEAD, OPTIONS"

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method in ("GET", "HEAD"):
            return view(request, *args, **kwargs)
        if request.method == "OPTIONS":
            return JsonResponse({}, headers={"Allow": allow})
        body = error_body(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
        return JsonResponse(body, status=405, headers={"Allow": allow})

    return csrf_exempt(wrapped)

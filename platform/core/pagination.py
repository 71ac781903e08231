"""Cursor lists in the contract's shape: ``{"object": "list", "data", "has_more"}`` with
``limit`` and ``starting_after``. Newest first; the cursor is an object id, so pages stay
stable while new objects arrive."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, cast

from django.db.models import Q, QuerySet
from drf_spectacular.utils import OpenApiParameter

from .errors import InvalidRequest, NotFound

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

# What every list endpoint documents (drf-spectacular ``parameters=``).
LIST_PARAMETERS = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        description=f"1 to {MAX_LIMIT}, default {DEFAULT_LIMIT}.",
    ),
    OpenApiParameter(
        "starting_after",
        {"type": "string", "minLength": 1},
        description="An object id: the page after it.",
    ),
]
# Their names: what a list view declares it takes (``TenantAPIView.query_parameters``).
LIST_QUERY = frozenset(p.name for p in LIST_PARAMETERS)
_INTEGER = re.compile(r"-?[0-9]+")


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # NOTE: not int(): it takes " 5", "+5" and "1_0"; an empty limit= is no integer either.
    if not _INTEGER.fullmatch(raw):
        raise InvalidRequest("limit must be an integer.", code="invalid_parameter", param="limit")
    # (Past 18 digits, no int() of it: an integer all the same, out of range.)
    limit = int(raw) if len(raw) <= 18 else MAX_LIMIT + 1
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(
            f"limit must be between 1 and {MAX_LIMIT}.", code="invalid_parameter", param="limit"
        )
    return limit


def parse_cursor(query_params: Any) -> str | None:
    """The ``starting_after`` id, or None for the first page; an empty one is a 400, as an
    empty ``limit`` is (it was read as no cursor: a client that lost its cursor got the first
    page again, silently)."""
    cursor_id = query_params.get("starting_after")
    if cursor_id == "":
        raise InvalidRequest(
            "starting_after must be an object id; leave it out for the first page.",
            code="invalid_parameter",
            param="starting_after",
        )
    return cast(str | None, cursor_id)


def paginate(
    queryset: QuerySet[Any],
    *,
    query_params: Any,
    time_field: str = "created_at",
    cursors: QuerySet[Any] | None = None,
) -> tuple[list[Any], bool]:
    """Return (page, has_more) for a queryset already scoped to the tenant. ``cursors``:
    where a ``starting_after`` id is looked up, when objects leave the list but stay in the
    table (deleted, revoked): the page after one still follows its place, so a client that
    deletes each page it reads can go on to the next."""
    limit = parse_limit(query_params.get("limit"))
    queryset = queryset.order_by(f"-{time_field}", "-pk")
    cursor_id = parse_cursor(query_params)
    if cursor_id is not None:
        found_in = queryset if cursors is None else cursors
        cursor = found_in.filter(pk=cursor_id).values(time_field, "pk").first()
        if cursor is None:
            raise NotFound(
                f"No such object: '{cursor_id}'.", code="resource_missing", param="starting_after"
            )
        moment = cursor[time_field]
        queryset = queryset.filter(
            Q(**{f"{time_field}__lt": moment}) | Q(**{time_field: moment, "pk__lt": cursor["pk"]})
        )
    rows = list(queryset[: limit + 1])
    return rows[:limit], len(rows) > limit


def list_body(items: Sequence[Any], has_more: bool, render: Callable[[Any], Any]) -> dict[str, Any]:
    return {"object": "list", "data": [render(item) for item in items], "has_more": has_more}

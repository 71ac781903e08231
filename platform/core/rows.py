"""One model instance by a hand-written WHERE clause, built as the ORM builds it, for the
lookups that run on every API call.

NOTE: compiling a queryset costs more than running it here: the ORM-compiled API-key
lookup cost 0.65 ms of CPU, ``raw()`` 0.19-0.27 ms, this ~0.07 ms; a fine-tuned model's
``visible_to(...).filter(pk=...).first()`` 356 us against 27 us (timeit). The row's values go
through the database backend's and the fields' own converters (SQLite's datetimes and
JSON, as the ORM would), then ``Model.from_db``; tests hold each use equal to the ORM's
answer (tests/platform/test_apikeys.py, test_rows.py)."""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


def fetch_one(model: type[M], where: str, params: list[Any]) -> M | None:
    """The first row of ``model``'s table matching ``where`` (SQL over its columns, with
    ``%s`` placeholders for ``params``; quote names with ``column``), or None."""
    with connection.cursor() as cursor:
        cursor.execute(f"{_select(model, connection.vendor)} WHERE {where} LIMIT 1", params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, expression, converters in _converters(model, connection.vendor):
        for convert in converters:
            values[index] = convert(values[index], expression, connection)
    return model.from_db(connection.alias, _attnames(model), values)


def column(model: type[Model], field: str) -> str:
    """A field's column name, quoted for this database."""
    name = getattr(model._meta.get_field(field), "column", None)
    if not isinstance(name, str):
        raise ValueError(f"{model.__name__}.{field} has no column")
    return str(connection.ops.quote_name(name))


@functools.cache
def _select(model: type[Model], vendor: str) -> str:
    meta = model._meta
    quote = connection.ops.quote_name
    # Names come from the model's own metadata; values are query parameters.
    columns = ", ".join(quote(str(f.column)) for f in meta.concrete_fields)
    return f"SELECT {columns} FROM {quote(meta.db_table)}"  # noqa: S608


@functools.cache
def _attnames(model: type[Model]) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields]


@functools.cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, Any, list[Any]]]:
    """(column index, column expression, converters) of the fields that need any on this
    database vendor."""
    meta = model._meta
    found = []
    for index, field in enumerate(meta.concrete_fields):
        expression = field.get_col(meta.db_table)
        converters = connection.ops.get_db_converters(expression) + field.get_db_converters(
            connection
        )
        if converters:
            found.append((index, expression, converters))
    return found

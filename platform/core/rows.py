"""One model instance by a hand-written WHERE clause, built as the ORM builds it, for the
lookups that run on every API call; and the ledger's insert that skips rows already stored.

NOTE: compiling a queryset costs more than running it here: the ORM-compiled API-key
lookup cost 0.65 ms of CPU, ``raw()`` 0.19-0.27 ms, this ~0.07 ms; a fine-tuned model's
``visible_to(...).filter(pk=...).first()`` 356 us against 27 us (timeit). The row's values go
through the database backend's and the fields' own converters (SQLite's datetimes and
JSON, as the ORM would), then ``Model.from_db``; tests hold each use equal to the ORM's
answer (tests/platform/test_apikeys.py, test_rows.py)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import DateTimeField, DecimalField, Field, Model

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


# Rows per INSERT statement in ``insert_new``: SQLite takes at most 32,766 parameters.
INSERT_BATCH = 500


def insert_new(model: type[Model], rows: Sequence[Any], *, unique: str) -> set[Any]:
    """Insert ``rows`` (objects with ``model``'s field attributes; the primary key is the
    database's to assign) except those whose ``unique`` field is already stored; returns
    the ``unique`` values of the rows that went in.

    ``INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING unique`` (PostgreSQL, and SQLite
    since 3.35): a row stored before, or by a concurrent writer first, is skipped by the
    constraint, and RETURNING says which went in, with no read beforehand. Datetimes and
    decimals go through their fields' ``get_db_prep_save``, as the ORM's; strings, numbers
    and booleans go as they are.

    The conflict has no target: a partitioned table (the ledger on PostgreSQL) has no unique
    index on ``unique`` to name, and keeps it unique by a trigger that skips a stored row
    itself (``metering.partitions``); the same INSERT serves a table that is not (yet)
    partitioned, whose unique index it then skips on."""
    if not rows:
        return set()
    fields, converted = _insert_fields(model)
    one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    inserted: set[Any] = set()
    db = connections[DEFAULT_DB_ALIAS]  # resolved once: the proxy costs a lookup a use
    with db.cursor() as cursor:
        for start in range(0, len(rows), INSERT_BATCH):
            chunk = rows[start : start + INSERT_BATCH]
            params: list[Any] = []
            for row in chunk:
                for f in fields:
                    value = getattr(row, f.attname)
                    params.append(
                        f.get_db_prep_save(value, db) if f.attname in converted else value
                    )
            values = ", ".join([one_row] * len(chunk))
            sql = _insert(model, unique, db.vendor).format(values=values)
            cursor.execute(sql, params)
            inserted.update(value for (value,) in cursor.fetchall())
    return inserted


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
def _insert_fields(model: type[Model]) -> tuple[list[Field[Any, Any]], frozenset[str]]:
    """The fields an INSERT writes (all but the primary key), and the attribute names of
    those whose values need the field's own conversion (datetimes, decimals)."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    converted = {f.attname for f in fields if isinstance(f, DateTimeField | DecimalField)}
    return fields, frozenset(converted)


@functools.cache
def _insert(model: type[Model], unique: str, vendor: str) -> str:
    meta = model._meta
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(f.column)) for f in _insert_fields(model)[0])
    key = column(model, unique)
    # Names come from the model's own metadata; values are query parameters.
    return (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {{values}} "  # noqa: S608
        f"ON CONFLICT DO NOTHING RETURNING {key}"
    )


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

"""The API's limit on one SQL statement (``DATABASE_STATEMENT_TIMEOUT_MS``, PostgreSQL).

A request's query could run unbounded: a report on a large ledger, a lock another session
holds, and the request's thread and connection were held as long. The limit is set on the
connections of the API server's processes only (``config.wsgi`` calls
``statement_timeout_set`` before Django opens any): migrations, management commands
(``rebuild_rollups``, ``simulate_pricing``), the consumers and the platform worker never
load that module, and run unlimited.

It travels as a libpq startup option (``-c statement_timeout=N``): the server applies it
when the connection opens, so it costs no round trip, per request or per connection (a
``SET`` from a ``connection_created`` receiver would cost one each time a connection opens).
A statement cancelled by it (SQLSTATE 57014, ``query_canceled``) is an ``OperationalError``,
which the API answers as its 503 ``database_timeout`` with ``Retry-After: 30``
(``core.errors``: retried at once, the same request may take as long again), and the admin
as its "Not done" page (``core.middleware``).

NOTE: PgBouncer refuses an unknown startup parameter unless ``ignore_startup_parameters``
names ``options``: behind one, set the limit on the API's database role instead
(``ALTER ROLE ... SET statement_timeout``) and this variable to 0.
"""

from __future__ import annotations

from typing import Any

QUERY_CANCELED = "57014"
POSTGRESQL = "django.db.backends.postgresql"


def statement_timeout_set(databases: dict[str, dict[str, Any]], timeout_ms: int) -> None:
    """Give every PostgreSQL database in ``databases`` (Django's ``DATABASES``) a statement
    timeout of ``timeout_ms`` on each connection it opens from now on; 0 or less: none."""
    if timeout_ms <= 0:
        return
    for config in databases.values():
        if config.get("ENGINE") != POSTGRESQL:
            continue
        options = config.setdefault("OPTIONS", {})
        given = str(options.get("options", ""))  # a URL's own ?options=... is kept
        options["options"] = f"{given} -c statement_timeout={int(timeout_ms)}".strip()


def statement_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` (Django's wrapper, or the driver's error) is a statement the server
    cancelled: the statement timeout, or an operator's ``pg_cancel_backend``."""
    return any(getattr(error, "sqlstate", None) == QUERY_CANCELED for error in (exc, exc.__cause__))

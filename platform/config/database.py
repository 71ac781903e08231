"""The database settings: ``DATABASE_URL`` checked (``ImproperlyConfigured`` naming the
variable for one the project cannot use) and read into Django's ``DATABASES`` entry."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def database_config(url: str) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    )
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # NOTE: make run starts the API, a worker-facing consumer and the admin against one
        # SQLite file. WAL lets readers run beside the writer, the busy timeout makes a writer
        # wait instead of failing, and IMMEDIATE transactions take the write lock up front so
        # two transactions never deadlock upgrading from read to write.
        # NOTE: connections persist like PostgreSQL's (conn_max_age above): opening one costs
        # ~1.2 ms here (the PRAGMAs run on each), measured, against ~5 ms for a whole request.
        config["CONN_HEALTH_CHECKS"] = False
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
            ),
        }
    return config


# The databases the project runs and is tested on (psycopg 3, Python's sqlite3): a mysql://
# URL parsed, then failed at the first query on a driver never installed.
DATABASE_SCHEMES = ("postgres", "postgresql", "pgsql", "sqlite")


def database_url(environ: Mapping[str, str], data_dir: Path) -> str:
    """``DATABASE_URL``, or make run's SQLite file in ``data_dir``, ``DATA_DIR`` (made where
    missing: a new directory was "unable to open database file" at the first query, and so
    was a file); ``ImproperlyConfigured`` naming the variable for one the project cannot
    use (never echoing the URL: it holds the password)."""
    url = environ.get("DATABASE_URL")
    if not url:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # (a file there: FileExistsError; no right to: PermissionError)
            why = "a file is there" if isinstance(exc, FileExistsError) else exc.strerror
            raise ImproperlyConfigured(
                f"DATA_DIR must be a directory this process can make or use, got "
                f"{str(data_dir)!r} ({why})"
            ) from None
        return f"sqlite:///{data_dir / 'db.sqlite3'}"
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgres:// or sqlite:/// URL, got scheme {scheme!r}"
        )
    name = dj_database_url.parse(url)["NAME"] if scheme == "sqlite" else None
    if name and name != ":memory:" and not Path(name).parent.is_dir():
        raise ImproperlyConfigured(
            f"DATABASE_URL names a SQLite file in a directory that does not exist: "
            f"{str(Path(name).parent)!r}"
        )
    return url

"""A database that is locked (SQLite: another writer past the busy timeout) or unreachable,
as customers meet it: a 503 in the contract's shape that says to retry, never a 500; an
answer already made (and billed) still reaches its caller; a key's bookkeeping write waits
a moment, not the whole busy timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction

from apikeys.models import ApiKey
from tests.factories import TenantFactory, bearer, key_id_of, make_key


@contextlib.contextmanager
def connections_other() -> Any:
    """A cursor on a connection of its own (psycopg, outside Django's)."""
    import psycopg

    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"],
        dbname=settings["NAME"], autocommit=True,
    ) as conn, conn.cursor() as cursor:  # fmt: skip
        yield cursor


def _busy(*args: object, **kwargs: object) -> None:
    raise OperationalError("database is locked")


@pytest.mark.django_db
def test_a_write_the_locked_database_refuses_is_a_503_to_retry(monkeypatch):
    secret = make_key(TenantFactory(), ["admin"])
    monkeypatch.setattr("apikeys.apis.api_key_create", _busy)
    response = bearer(secret).post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "overloaded", "database_unavailable", None
    )  # fmt: skip
    assert "retry" in error["message"] and response["Retry-After"] == "2"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor == "sqlite", reason="no connection to drop: one try")
def test_a_dropped_connection_while_recording_an_idempotency_key_is_tried_again(monkeypatch):
    """Unrecorded, the key's retry made a second API key (or fine-tune job). The server ends
    the request's connection under it; the next try opens a new one."""
    from core import views

    secret = make_key(TenantFactory(), ["admin"])
    finish, failures = views.idempotency_finish, []

    def dropped_once(**kwargs: object) -> None:
        if not failures:
            failures.append(connection.connection.info.backend_pid)
            with connections_other() as other:  # another session ends this one
                other.execute("SELECT pg_terminate_backend(%s)", [failures[0]])
            finish(**kwargs)  # type: ignore[arg-type]  # fails: the connection is gone
        finish(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(views, "FINISH_RETRY_PAUSES_S", (0.0, 0.0, 0.0))
    monkeypatch.setattr(views, "idempotency_finish", dropped_once)
    client = bearer(secret)
    body = {"scopes": ["inference"]}
    made = client.post("/v1/api-keys", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    again = client.post("/v1/api-keys", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert made.status_code == again.status_code == 201 and len(failures) == 1
    assert connection.connection.info.backend_pid != failures[0]  # a new connection
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == made.json()["id"]
    assert ApiKey.objects.unscoped().filter(pk=made.json()["id"]).count() == 1


@pytest.mark.django_db
def test_an_answer_made_stands_when_its_idempotency_record_cannot_be_written(monkeypatch):
    """It was a 500 (a classification the worker had answered, and billed)."""
    secret = make_key(TenantFactory(), ["admin"])
    monkeypatch.setattr("core.views.FINISH_RETRY_PAUSES_S", (0.0, 0.0, 0.0))
    monkeypatch.setattr("core.views.idempotency_finish", _busy)
    made = bearer(secret).post(
        "/v1/api-keys", {"scopes": ["inference"]}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert made.status_code == 201 and made.json()["secret"].startswith("sk_live_")


@pytest.mark.django_db(transaction=True)
def test_a_keys_last_used_write_waits_a_moment_for_a_locked_database_not_its_timeout():
    """A write lock held by another writer held every call whose key was due a last_used_at
    write for the whole busy timeout (30 s on SQLite; 40 calls and /healthz behind them)."""
    secret = make_key(TenantFactory(), ["inference"])
    key_id = key_id_of(secret)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():  # SQLite: BEGIN IMMEDIATE takes the write lock
                list(ApiKey.objects.unscoped().select_for_update().filter(pk=key_id))
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        response = bearer(secret).get("/v1/models")
        waited = time.monotonic() - began
    finally:
        release.set()
        holder.join()
    assert response.status_code == 200
    assert waited < 10, f"the call waited {waited:.1f} s on the lock"  # it was 30
    assert ApiKey.objects.unscoped().get(pk=key_id).last_used_at is None  # skipped
    assert bearer(secret).get("/v1/models").status_code == 200
    assert ApiKey.objects.unscoped().get(pk=key_id).last_used_at is not None  # written now


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own error wording")
def test_an_sqlite_error_no_retry_can_pass_stays_a_500(monkeypatch):
    """A missing table (a migration not run) is a bug to fix, not a 503 to retry."""

    def missing(*args: object, **kwargs: object) -> None:
        raise OperationalError("no such table: apikeys_apikey")

    secret = make_key(TenantFactory(), ["admin"])
    monkeypatch.setattr("apikeys.apis.api_key_create", missing)
    client = bearer(secret)
    client.raise_request_exception = False  # the 500 as a client meets it
    response = client.post("/v1/api-keys", {"scopes": ["inference"]}, format="json")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"

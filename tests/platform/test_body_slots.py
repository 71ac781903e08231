"""A tenant's slow request bodies hold at most ``BODY_READS_PER_TENANT`` of an API process's
request threads (``core.body_slots``): a key and a few dozen connections that sent headers
and a trickle of body held them all, and no tenant's request (nor a health probe) was
answered until they closed. Through the WSGI application the server runs, with bodies that
have not arrived yet."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from config.wsgi import application
from core import body_slots
from tests.factories import TenantFactory, make_key

BODY = json.dumps({"name": "slow", "scopes": ["inference"]}).encode()


class Trickle(io.RawIOBase):
    """A body whose bytes arrive when ``gate`` opens."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate, self.left = gate, BODY

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.gate.wait(20)
        size = len(self.left) if size is None or size < 0 else size
        data, self.left = self.left[:size], self.left[size:]
        return data


def call(
    secret: str, stream: Any, query: str = "", method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/v1/api-keys", "QUERY_STRING": query,
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": stream, "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
    }  # fmt: skip
    status: list[str] = []
    try:
        payload = b"".join(application(environ, lambda s, h, *_: status.append(s)))
    finally:
        connection.close()
    return int(status[0].split()[0]), json.loads(payload)


def test_slow_bodies_of_one_tenant_leave_the_other_threads_to_everyone(transactional_db, settings):
    settings.BODY_READS_PER_TENANT = 2
    slow, other = TenantFactory(), TenantFactory()
    slow_key, other_key = make_key(slow, ["admin"]), make_key(other, ["admin"])
    gate = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, slow_key, Trickle(gate)) for _ in range(2)]
        deadline = time.monotonic() + 10
        while body_slots._counts.get(slow.pk, 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # A third body of the tenant's is refused at once, holding no thread...
        status, body = call(slow_key, io.BytesIO(BODY))
        assert status == 429 and body["error"]["code"] == "concurrency_limited"
        # ... another tenant's goes through, and once the slow bodies are in, so do they.
        assert call(other_key, io.BytesIO(BODY))[0] == 201
        gate.set()
        assert [future.result(timeout=20)[0] for future in held] == [201, 201]
    assert body_slots._counts.get(slow.pk, 0) == 0  # every slot given back
    assert call(slow_key, io.BytesIO(BODY))[0] == 201


@pytest.mark.django_db
def test_a_refused_body_gives_its_slot_back(tenant, client_for, settings):
    settings.BODY_READS_PER_TENANT = 1
    api = client_for(tenant, ["admin"])
    for _ in range(3):  # one slot: each request takes it and gives it back, good or bad
        assert (
            api.post("/v1/api-keys", b"{not json", content_type="application/json").status_code
            == 400
        )
        assert api.post("/v1/api-keys", {"scopes": ["inference"]}, format="json").status_code == 201
    assert body_slots._counts.get(tenant.pk, 0) == 0


def test_a_body_left_unread_by_a_refusal_is_still_drained(transactional_db):
    """Refused before its body was read (an unknown parameter here): the body is drained, as
    for every other refusal, so the keep-alive connection stays usable. The slots' wrapper
    had hidden the stream from the drain."""
    secret = make_key(TenantFactory(), ["admin"])
    stream = io.BytesIO(BODY)
    assert call(secret, stream, query="foo=1")[0] == 400
    assert stream.tell() == len(BODY)  # read out
    assert not body_slots._counts  # and its slot given back


@pytest.mark.parametrize(
    ("method", "scopes", "status"), [("GET", ["admin"], 200), ("POST", ["inference"], 403)]
)
def test_a_body_no_view_reads_is_drained_under_the_tenants_slots_too(
    transactional_db, settings, method, scopes, status
):
    """A GET that announces a body and never sends it, or a POST refused for its key's scope
    before the view: the drain after the answer read it with no slot and no time limit, and
    40 such connections of one key held every thread of the server, health probes included."""
    settings.BODY_READS_PER_TENANT = 2
    slow, other = TenantFactory(), TenantFactory()
    slow_key, other_key = make_key(slow, scopes), make_key(other, ["admin"])
    gate = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(call, slow_key, Trickle(gate), "", method) for _ in range(2)]
        deadline = time.monotonic() + 10
        while body_slots._counts.get(slow.pk, 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert body_slots._counts.get(slow.pk, 0) == 2
        # A third is answered at once, its body left to the server (no slot to read it in)...
        third = pool.submit(call, slow_key, Trickle(gate), "", method)
        assert third.result(timeout=10)[0] == status
        assert call(other_key, io.BytesIO(BODY), "", "GET")[0] == 200  # ... and others' too
        gate.set()
        assert [future.result(timeout=20)[0] for future in held] == [status, status]
    assert not body_slots._counts.get(slow.pk)

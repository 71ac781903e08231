"""A Stripe that stops answering: each try of a request gives up after STRIPE_TIMEOUT_S
(the library's default was 80 s, three tries: a billing read held its caller four minutes),
and at most STRIPE_CONCURRENCY of a process's threads wait on Stripe at once (thirty held
billing reads starved classifications, health checks and webhooks of the API's threads:
an audit)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

pytestmark = pytest.mark.django_db


class StalledServer:
    """Accepts connections and never answers; counts how many it holds at once."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.most_at_once = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self.held.append(conn)
            self.most_at_once = max(self.most_at_once, len(self.held))
        while conn.recv(65536):  # until the client gives up and closes
            pass
        with self._lock:
            self.held.remove(conn)
        conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stalled() -> Iterator[StalledServer]:
    server = StalledServer()
    yield server
    server.close()


def test_a_stalled_stripe_is_a_503_in_seconds_not_minutes(tenant, client_for, settings, stalled):
    client = client_for(tenant, ["billing"])
    assert client.post("/v1/subscription", {"plan": "pro"}, format="json").status_code == 200
    settings.STRIPE_API_BASE = stalled.url
    settings.STRIPE_TIMEOUT_S = 0.3
    began = time.monotonic()
    response = client.get("/v1/invoices/upcoming")
    waited = time.monotonic() - began
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "billing_unavailable"
    assert response["Retry-After"] == "5"
    # Three tries of 0.3 s and the library's backoff between them (under 1.5 s).
    assert waited < 8, waited


def test_at_most_stripe_concurrency_threads_wait_on_stripe_at_once(settings, stalled: Any):
    """Through the library, as billing calls it: a request that finds no place gives up
    after a second, untried again (the library's retries held it ~4 s more: a review)."""
    from billing.stripe_client import stripe_api

    settings.STRIPE_API_BASE = stalled.url
    settings.STRIPE_TIMEOUT_S = 2
    settings.STRIPE_CONCURRENCY = 1
    api = stripe_api()
    waited: dict[str, float] = {}
    errors: list[stripe.APIConnectionError] = []

    def call(name: str) -> None:
        began = time.monotonic()
        try:
            api.Customer.retrieve("cus_stalled")
        except stripe.APIConnectionError as exc:
            errors.append(exc)
        waited[name] = time.monotonic() - began

    first = threading.Thread(target=call, args=("first",))
    first.start()
    while not stalled.held:  # the first holds the one place, waiting on Stripe
        time.sleep(0.01)
    others = [threading.Thread(target=call, args=(f"other{n}",)) for n in range(2)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join()
    assert [w for name, w in waited.items() if name != "first"] and all(
        0.9 < w < 2.5 for name, w in waited.items() if name != "first"
    ), waited
    assert sum("waiting on the payment provider" in str(e) for e in errors) == 2
    assert stalled.most_at_once == 1
    first.join()

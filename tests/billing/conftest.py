"""The Stripe emulator (localstripe) for the billing tests: one process per test session on
a free loopback port with its own store (tests/billing/localstripe_server.py), the official
``stripe`` library pointed at it through settings, webhook targets registered on demand and
a real Celery worker (in a thread, on the test Redis) for the platform queue."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.webhooks import HANDLERS
from tests.billing.helpers import API_KEY, SECRETS

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="localstripe-"))
    log = (workdir / "localstripe.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(HERE / "localstripe_server.py"), str(port), str(workdir / "store")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/v1/customers", auth=(API_KEY, ""), timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((workdir / "localstripe.log").read_text()[-3000:]) from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(autouse=True)
def billing_settings(settings: Any, localstripe: str, request: pytest.FixtureRequest) -> None:
    """Every billing test talks to the emulator, with a seeded catalogue."""
    from plans.catalog import plans_seed
    from plans.models import Plan

    settings.STRIPE_API_KEY = API_KEY
    settings.STRIPE_API_BASE = localstripe
    settings.STRIPE_WEBHOOK_SECRETS = list(SECRETS)
    transactional = {"live_server", "transactional_db"} & set(request.fixturenames)
    request.getfixturevalue("transactional_db" if transactional else "db")
    plans_seed(Plan)  # transactional tests flush the data migration's rows


@pytest.fixture
def stripe_api() -> Any:
    from billing.stripe_client import stripe_api

    return stripe_api()


@pytest.fixture
def webhook_target(localstripe: str, live_server: Any) -> Iterator[Callable[[], str]]:
    """Call it to have localstripe deliver the events we handle to this test's server."""

    def register() -> str:
        httpx.post(
            f"{localstripe}/_config/webhooks/margin",
            data={"url": f"{live_server.url}/webhooks/stripe", "secret": SECRETS[0],
                  "events[]": sorted(HANDLERS)},
        ).raise_for_status()  # fmt: skip
        return str(live_server.url)

    try:
        yield register
    finally:
        # Nothing listens on port 9: later events go nowhere instead of into other tests.
        httpx.post(
            f"{localstripe}/_config/webhooks/margin",
            data={"url": "http://127.0.0.1:9/", "secret": SECRETS[0]},
        )


@pytest.fixture
def platform_worker(live_server: Any) -> Callable[[], AbstractContextManager[Any]]:
    """A real Celery worker for the platform queue, started on demand in a thread of this
    process so that it sees the test database.

    NOTE: the tests start the worker after their deliveries rather than beside them. That
    was needed while the SQLite test database was in memory with a shared cache, where two
    threads writing at once fail ("table is locked"); it is a file now (settings/test.py)."""
    from celery.contrib.testing.worker import start_worker

    from config.celery import PLATFORM_QUEUE, app

    def run() -> AbstractContextManager[Any]:
        return start_worker(  # type: ignore[no-any-return]
            app, pool="solo", perform_ping_check=False, queues=[PLATFORM_QUEUE],
            loglevel="WARNING",
        )  # fmt: skip

    return run

"""The consumers against a Redis that goes away: killed (SIGKILL) or stopped, and started
again on the same data, while events keep coming. Each test has a Redis server of its own
(``deploy.embedded_redis``, as ``make run`` starts it), so that killing it touches nothing
else; the database is the suite's."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection
from kombu import Connection

from deploy import devserver
from deploy.embedded_redis import start_embedded_redis, stop_embedded_redis
from finetuning.consumer import DEAD_LETTER_KEY as JOB_DEAD_LETTER_KEY
from finetuning.consumer import JobEventConsumer, events_queue
from metering import consumer as usage_consumer
from metering.consumer import UsageConsumer
from metering.models import UsageRecord
from workers.contract import TRAINING_EVENTS_ROUTING_KEY, USAGE_GROUP, USAGE_STREAM

ROOT = Path(__file__).resolve().parents[2]


class PrivateRedis:
    """A redis-server of the test's own, killed and started again on the same port and
    directory (its append-only file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)
        self.server, self.url = start_embedded_redis(self.directory)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.client = redis.Redis.from_url(self.url)

    def kill(self) -> None:
        """SIGKILL, as the audit did: no chance to write anything more."""
        os.kill(self.server.pid, signal.SIGKILL)
        # The dead server's handle must not try to shut it down again when collected.
        os.remove(self.server.pidfile)

    def stop(self) -> None:
        stop_embedded_redis(self.server)

    def start(self) -> None:
        self.server, url = start_embedded_redis(self.directory, self.port)
        assert url == self.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.client.close()
    stop_embedded_redis(server.server)


def usage_event(tenant: Any, n: int) -> dict[str, object]:
    return {
        "v": 1,
        "event_id": f"req_fault{n}",
        "kind": "inference",
        "tenant_id": tenant.pk,
        "api_key_id": "key_x",
        "livemode": True,
        "model": "minilm-l6",
        "inputs": 1,
        "tokens": 10,
        "compute_ms": 1.0,
        "cached": 0,
        "occurred_at": datetime.now(UTC).isoformat(),
        "worker": "w1",
    }


def publish_usage(client: redis.Redis, tenant: Any, numbers: range) -> None:
    """What a worker does, retrying while Redis is away (a retried XADD that had gone
    through adds the event twice: the ledger must still count it once)."""
    for n in numbers:
        while True:
            try:
                client.xadd(USAGE_STREAM, {"event": json.dumps(usage_event(tenant, n))})
                break
            except redis.ConnectionError:
                time.sleep(0.05)


def in_thread(
    run: Callable[[Callable[[], bool]], object],
) -> tuple[threading.Thread, threading.Event]:
    """Run a consumer loop in a thread of its own (its own database connection), until the
    returned event is set."""
    stop = threading.Event()

    def target() -> None:
        try:
            run(stop.is_set)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop


def database_url() -> str:
    """The test database, for a process of its own."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def warned(caplog: Any) -> bool:
    return any("Redis error" in record.getMessage() for record in caplog.records)


def test_usage_outlives_redis_restarts_and_each_event_is_recorded_once(
    transactional_db: Any, tenant: Any, private_redis: PrivateRedis, caplog: Any
) -> None:
    """The audit's case: Redis killed (kill -9) and started 3 s later, then stopped and
    started 1 s later, while calls keep being metered. The consumer carries on, and every event
    is in the ledger exactly once."""
    caplog.set_level(logging.WARNING, logger="metering.consumer")
    consumer = UsageConsumer(url=private_redis.url, flush_interval=0.05, name="faults")
    thread, stop = in_thread(lambda should_stop: consumer.run(should_stop=should_stop))
    producer = redis.Redis.from_url(private_redis.url)
    rows = UsageRecord.objects.for_tenant(tenant)

    def outage(stop_redis: Callable[[], None], down_s: float, numbers: range) -> None:
        stop_redis()
        # Published meanwhile: the producer waits, as a worker would, for Redis to be back.
        publisher = threading.Thread(target=publish_usage, args=(producer, tenant, numbers))
        publisher.start()
        time.sleep(down_s)
        private_redis.start()
        publisher.join(timeout=30)

    try:
        publish_usage(producer, tenant, range(0, 100))
        outage(private_redis.kill, 3.0, range(100, 200))
        assert wait_for(lambda: rows.count() >= 200), rows.count()
        assert thread.is_alive() and warned(caplog)
        caplog.clear()
        outage(private_redis.stop, 1.0, range(200, 300))
        publish_usage(producer, tenant, range(300, 400))

        assert wait_for(lambda: rows.count() >= 400), rows.count()
        time.sleep(0.5)  # anything recorded twice would show by now
        assert rows.count() == 400
        assert set(rows.values_list("event_id", flat=True)) == {f"req_fault{n}" for n in range(400)}
        assert thread.is_alive() and warned(caplog)
        assert wait_for(lambda: producer.xlen(USAGE_STREAM) == 0, timeout=10)
        assert producer.xpending(USAGE_STREAM, USAGE_GROUP)["pending"] == 0
    finally:
        stop.set()
        thread.join(timeout=15)
        producer.close()
    assert not thread.is_alive()


def test_usage_not_yet_stored_outlives_a_killed_embedded_redis(
    db: Any, tenant: Any, private_redis: PrivateRedis
) -> None:
    """The embedded Redis keeps an append-only file: events in the stream when it was killed
    are there when it is back (they meter answered calls): what it wrote to the file (under
    ``appendfsync everysec`` it holds writes back up to 2 s while a loaded disk syncs)."""
    publish_usage(private_redis.client, tenant, range(20))
    assert wait_for(
        lambda: private_redis.client.info("persistence")["aof_buffer_length"] == 0, timeout=10
    )
    private_redis.kill()
    private_redis.start()
    assert UsageConsumer(url=private_redis.url, flush_interval=0.05).run(until_idle=True) == 20


class FlakyConsumer(UsageConsumer):
    """Its reads fail as they do when Redis restarts, then stalls past the socket timeout."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures: list[Exception] = [
            redis.ConnectionError("Connection closed by server."),
            redis.TimeoutError("Timeout reading from socket"),
        ]

    def _read(self, stream_id: str | bytes, *args: Any, **kwargs: Any) -> list[Any]:
        if stream_id == ">" and self.failures:
            raise self.failures.pop(0)
        return super()._read(stream_id, *args, **kwargs)


def test_a_redis_error_from_the_read_does_not_end_run(
    db: Any, tenant: Any, private_redis: PrivateRedis
) -> None:
    publish_usage(private_redis.client, tenant, range(3))
    consumer = FlakyConsumer(url=private_redis.url, flush_interval=0.05)
    assert consumer.run(until_idle=True) == 3
    assert consumer.failures == []
    assert UsageRecord.objects.for_tenant(tenant).count() == 3


def test_the_group_is_made_again_when_redis_lost_it(
    db: Any, tenant: Any, private_redis: PrivateRedis
) -> None:
    """A Redis that came back empty (no persistence) has neither the stream nor the group:
    XREADGROUP answers NOGROUP until the consumer makes the group again."""
    consumer = UsageConsumer(url=private_redis.url, flush_interval=0.05)
    rows = UsageRecord.objects.for_tenant(tenant)
    deadline = time.monotonic() + 30
    checks = 0

    def should_stop() -> bool:
        nonlocal checks
        checks += 1
        if checks == 5:
            private_redis.client.delete(USAGE_STREAM)
            publish_usage(private_redis.client, tenant, range(3))
        return (checks > 5 and rows.count() == 3) or time.monotonic() > deadline

    consumer.run(should_stop=should_stop)
    assert rows.count() == 3
    assert private_redis.client.xinfo_groups(USAGE_STREAM)[0]["name"] == USAGE_GROUP.encode()


def test_a_restarted_consumer_stores_what_it_had_read_at_once(
    db: Any, tenant: Any, private_redis: PrivateRedis
) -> None:
    """Its name is the same after a restart (the host's): what it read and never
    acknowledged is stored when it starts, not a minute later by another consumer's claim."""
    publish_usage(private_redis.client, tenant, range(5))
    crashed = UsageConsumer(url=private_redis.url, batch_size=2)
    crashed._ensure_group()
    assert len(crashed._read(">", None)) == 2
    assert len(crashed._read(">", None)) == 2  # more than one batch in hand, then killed

    restarted = UsageConsumer(url=private_redis.url, batch_size=2, flush_interval=0.05)
    assert restarted.name == crashed.name
    started = time.monotonic()
    assert restarted.run(until_idle=True) == 5
    assert time.monotonic() - started < usage_consumer.STALE_MS / 1000
    assert private_redis.client.xpending(USAGE_STREAM, USAGE_GROUP)["pending"] == 0


def test_consumers_long_gone_leave_the_group(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that starts forgets the group's members silent for long with nothing
    pending; one still holding entries stays (they are claimed from it first)."""
    monkeypatch.setattr(usage_consumer, "FORGET_IDLE_MS", 200)
    client = private_redis.client
    client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
    client.xadd(USAGE_STREAM, {"event": "{}"})
    client.xreadgroup(USAGE_GROUP, "gone-holding", {USAGE_STREAM: ">"}, count=1)
    client.xreadgroup(USAGE_GROUP, "gone", {USAGE_STREAM: ">"}, count=1)
    time.sleep(0.3)
    UsageConsumer(url=private_redis.url, name="new", flush_interval=0.05)._start()
    names = {c["name"] for c in client.xinfo_consumers(USAGE_STREAM, USAGE_GROUP)}
    assert names == {b"gone-holding", b"new"}


def test_the_job_events_consumer_outlives_a_redis_restart(
    transactional_db: Any, private_redis: PrivateRedis
) -> None:
    def publish(body: dict[str, object]) -> None:
        with Connection(private_redis.url) as conn:
            conn.Producer(serializer="json").publish(
                body,
                exchange=events_queue.exchange,
                routing_key=TRAINING_EVENTS_ROUTING_KEY,
                declare=[events_queue],
            )

    def dead() -> list[object]:
        return [
            json.loads(x)["event"] for x in private_redis.client.lrange(JOB_DEAD_LETTER_KEY, 0, -1)
        ]

    consumer = JobEventConsumer(url=private_redis.url, sweep_interval_s=60)
    thread, stop = in_thread(lambda should_stop: consumer.run(should_stop=should_stop))
    try:
        publish({"not": "an event", "n": 1})
        assert wait_for(lambda: len(dead()) == 1, timeout=20)
        private_redis.kill()
        time.sleep(2.0)
        private_redis.start()
        publish({"not": "an event", "n": 2})
        assert wait_for(lambda: len(dead()) == 2, timeout=30), dead()
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


# A stand-in for each of ``make run``'s children: it notes when SIGTERM stopped it.
STAND_IN = (
    "import signal, sys, time\n"
    "def stop(*_):\n"
    "    with open(sys.argv[1], 'a') as f: f.write(sys.argv[2] + '\\n')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "time.sleep(120)\n"
)
DEVSERVER = (
    "import sys\n"
    "from deploy import devserver\n"
    "log = sys.argv[1]\n"
    "devserver._children = lambda port: {\n"
    "    name: [sys.executable, '-c', sys.argv[2], log, name] for name in (\n"
    "        'api', 'inference-worker', 'usage-consumer', 'training-worker',\n"
    "        'training-events', 'platform-worker')}\n"
    "sys.exit(devserver.main())\n"
)


def test_make_run_stops_the_api_then_the_workers_then_the_consumers(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    log = tmp_path / "stopped"
    env = {
        **os.environ,
        "REDIS_URL": private_redis.url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", DEVSERVER, str(log), STAND_IN],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if b"API on" in line:
                break
        time.sleep(1.0)  # the stand-ins' handlers are in place
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    order = log.read_text().split()
    assert order[0] == "api"
    assert set(order[1:4]) == {"inference-worker", "training-worker", "platform-worker"}
    assert set(order[4:]) == {"usage-consumer", "training-events"}


def test_the_drain_waits_for_the_usage_consumer_to_store_what_is_left(
    transactional_db: Any,
    tenant: Any,
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the API answered while it was stopping is still in the stream when the workers
    are gone: the usage consumer (a real one, as ``make run`` starts it) stores it before it
    is stopped, and before the embedded Redis is."""
    publish_usage(private_redis.client, tenant, range(50))
    env = {
        **os.environ,
        "REDIS_URL": private_redis.url,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
    }
    consumer = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "consume_usage"], cwd=ROOT, env=env
    )
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    try:
        devserver._drain({"usage-consumer": consumer})
        assert private_redis.client.xlen(USAGE_STREAM) == 0
    finally:
        devserver._stop({"usage-consumer": consumer}, devserver.CONSUMERS)
    assert consumer.returncode == 0
    assert UsageRecord.objects.for_tenant(tenant).count() == 50


def test_a_usage_consumer_started_without_its_database_says_so(
    private_redis: PrivateRedis,
) -> None:
    """It said "waiting for events" and nothing more until the first batch failed: an
    operator saw a healthy consumer. It says at start that the database cannot be reached,
    and keeps running (the events wait in Redis)."""
    env = {**os.environ, "REDIS_URL": private_redis.url, "PYTHONUNBUFFERED": "1",
           "DATABASE_URL": "postgres://postgres@127.0.0.1:1/unreachable",
           "DJANGO_SETTINGS_MODULE": "config.settings.test"}  # fmt: skip
    consumer = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "consume_usage", "--name", "no-db"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert consumer.stdout is not None
        assert "waiting for events" in consumer.stdout.readline()
        assert consumer.poll() is None  # running
    finally:
        consumer.terminate()
        _, said = consumer.communicate(timeout=30)
    assert said.startswith("usage consumer: the database cannot be reached (OperationalError")
    assert "events wait in Redis and are stored once it can be" in said

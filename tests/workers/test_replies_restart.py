"""A worker's answers while Redis restarts: delivered (and billed) once Redis is back, while
their caller still waits; not lost behind a 503 for the compute already spent."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from deploy.embedded_redis import free_port, start_embedded_redis, stop_embedded_redis
from tests.workers.helpers import make_request
from tests.workers.test_replies import _reply, _stream_ids
from workers import replies
from workers.contract import reply_key


@pytest.fixture
def restartable(tmp_path, monkeypatch):
    """A Redis of the test's own on a fixed port, which it may stop and start again, with
    the worker's replies talking to it."""
    port = free_port()
    state = {"server": start_embedded_redis(str(tmp_path), port)[0]}
    url = f"redis://127.0.0.1:{port}/0"
    worker = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    monkeypatch.setattr(replies, "redis_client", lambda: worker)
    monkeypatch.setattr(replies, "_deliver", lambda: worker.register_script(replies.DELIVER))

    class Restart:
        client = redis.Redis.from_url(url)

        def stop(self) -> None:
            stop_embedded_redis(state["server"])

        def start(self) -> None:
            state["server"] = start_embedded_redis(str(tmp_path), port)[0]

    yield Restart()
    stop_embedded_redis(state["server"])


def test_answers_sent_while_redis_restarts_are_delivered_and_billed_once_it_is_back(restartable):
    waiting = make_request(["restart"], labels=["a", "b"], deadline=time.time() + 20)
    restartable.stop()
    worker = threading.Thread(target=replies.replies_send, args=([_reply(waiting)],))
    worker.start()  # Redis refuses connections: the worker keeps trying
    time.sleep(1.5)
    assert worker.is_alive()
    restartable.start()  # (its script cache empty: loaded again)
    worker.join(15)
    assert not worker.is_alive()
    assert restartable.client.llen(reply_key(waiting["request_id"])) == 1
    assert _stream_ids(restartable.client) == {waiting["request_id"]}


def test_answers_nobody_can_wait_for_any_more_are_given_up(restartable, monkeypatch):
    monkeypatch.setattr(replies, "GIVE_UP_GRACE_S", 0.2)
    late = make_request(["gone"], labels=["a", "b"], deadline=time.time() - 1)
    restartable.stop()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        replies.replies_send([_reply(late)])
    assert time.monotonic() - started < 2  # no wait past its deadline and grace

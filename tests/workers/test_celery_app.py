from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workers.celery_app import INFERENCE_TASK_POLICY, app
from workers.contract import Queue, TaskName

ROOT = Path(__file__).resolve().parents[2]


def test_configuration() -> None:
    conf = app.conf
    assert conf.broker_url == os.environ["REDIS_URL"]
    # Answers go back on per-request Redis lists (workers/replies.py), not a result backend.
    assert conf.task_ignore_result is True
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_default_queue == Queue.INFERENCE.value
    assert conf.task_routes[TaskName.CLASSIFY.value] == {"queue": Queue.INFERENCE.value}
    assert conf.worker_prefetch_multiplier == 1
    assert INFERENCE_TASK_POLICY["acks_late"] is False


def test_worker_never_loads_django_even_when_its_settings_are_in_the_env() -> None:
    # What `celery worker` does at start: load the app and its task modules.
    # NOTE: kombu's JSON module imports django.utils.functional when Django is installed
    # (to serialise lazy strings); that is a library import, not Django being set up.
    code = (
        "import sys; from workers.celery_app import app; "
        "app.loader.import_default_modules(); app.finalize(); "
        "assert 'workers.classify' in app.tasks; "
        "loaded = [m for m in sys.modules if m.startswith(('django.conf', 'django.db', "
        "'django.apps', 'rest_framework', 'config'))]; "
        "assert not loaded, loaded"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _task_logger_levels(extra_env: dict[str, str]) -> str:
    """The levels of Celery's per-task loggers after the worker's logging set-up."""
    code = (
        "import logging; from workers.celery_app import TASK_LOGGERS, app; "
        "app.log.setup(loglevel='INFO'); "
        "print(sorted({logging.getLevelName(logging.getLogger(n).getEffectiveLevel()) "
        "for n in TASK_LOGGERS}))"
    )
    env = {**os.environ, **extra_env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode().strip().splitlines()[-1]


def test_per_task_log_lines_are_off_unless_asked_for() -> None:
    # A worker at --loglevel INFO writes no "received"/"succeeded" line per classification...
    assert _task_logger_levels({"WORKER_LOG_TASKS": ""}) == "['WARNING']"
    # ...unless the operator turns them on.
    assert _task_logger_levels({"WORKER_LOG_TASKS": "1"}) == "['INFO']"

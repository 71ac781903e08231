"""A setting the control plane cannot use stops it at start, naming the variable: a negative
timeout started a stack that looked healthy (``/readyz`` 200) and answered every call 503,
NaN made every request a 500, and a zero usage batch stored no usage at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("INFERENCE_TIMEOUT_S=-1", "INFERENCE_TIMEOUT_S must be >= 0.001, got -1.0"),
        ("INFERENCE_TIMEOUT_S=nan", "INFERENCE_TIMEOUT_S must be a finite number, got 'nan'"),
        ("USAGE_BATCH_SIZE=0", "USAGE_BATCH_SIZE must be >= 1, got 0"),
        ("HSTS_SECONDS=abc", "HSTS_SECONDS must be an integer, got 'abc'"),
        ("LOG_LEVEL=loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        # Taken at start, then every classification was a 500 (a date past year 9999)...
        ("INFERENCE_TIMEOUT_S=1e308", "INFERENCE_TIMEOUT_S must be <= 1e+07, got 1e+308"),
        # ... every call of a tenant past due, and the usage consumer crashed.
        ("PAST_DUE_GRACE_DAYS=99999999999", "PAST_DUE_GRACE_DAYS must be <= 3650, got 99999999999"),
        ("USAGE_FLUSH_INTERVAL_S=1e308", "USAGE_FLUSH_INTERVAL_S must be <= 1e+07"),
        ("REDIS_URL=garbage", "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
        # (0 meant no time limit at all, and 0 jobs one, neither said.)
        ("FINETUNE_TIME_LIMIT_S=0", "FINETUNE_TIME_LIMIT_S must be >= 1.0, got 0.0"),
        ("FINETUNE_DISPATCHED_PER_TENANT=0", "FINETUNE_DISPATCHED_PER_TENANT must be >= 1, got 0"),
    ],
)
def test_a_setting_out_of_range_stops_the_control_plane_naming_it(tmp_path, setting, says):
    name, value = setting.split("=", 1)
    run = _check(tmp_path, **{name: value})
    assert run.returncode != 0
    assert f"ImproperlyConfigured: {says}" in run.stderr


def test_settings_in_range_start_it(tmp_path):
    run = _check(tmp_path, INFERENCE_TIMEOUT_S="0.5", LOG_LEVEL="debug")
    assert run.returncode == 0, run.stderr


def _check(tmp_path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` with ``settings`` in the environment, on a SQLite file of its own."""
    env = {**os.environ, **settings, "DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )

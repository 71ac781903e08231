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
        # (Each failed at the first query, saying neither the variable nor the value; the
        # URL, which holds the password, is not echoed.)
        (
            "DATABASE_URL=mysql://app:s3cret@db/app",
            "DATABASE_URL must be a postgres:// or sqlite:/// URL, got scheme 'mysql'",
        ),
        ("DATABASE_URL=db.example.com", "DATABASE_URL must be a postgres:// or sqlite:///"),
        (
            "DATABASE_URL=sqlite:////nonexistent/dir/db.sqlite3",
            "DATABASE_URL names a SQLite file in a directory that does not exist: "
            "'/nonexistent/dir'",
        ),
    ],
)
def test_a_setting_out_of_range_stops_the_control_plane_naming_it(tmp_path, setting, says):
    name, value = setting.split("=", 1)
    run = _check(tmp_path, **{name: value})
    assert run.returncode != 0
    assert f"ImproperlyConfigured: {says}" in run.stderr
    assert "s3cret" not in run.stderr  # (a database URL's password)


def test_settings_in_range_start_it(tmp_path):
    run = _check(tmp_path, INFERENCE_TIMEOUT_S="0.5", LOG_LEVEL="debug")
    assert run.returncode == 0, run.stderr


def test_a_new_data_dir_is_made_and_a_file_there_is_named(tmp_path):
    """make run's SQLite file goes in DATA_DIR: one not made yet is made (it was "unable to
    open database file" at the first query), and a file in its place is said."""
    new = tmp_path / "data" / "here"
    run = _check(tmp_path, DATA_DIR=str(new))
    assert run.returncode == 0, run.stderr
    assert new.is_dir()
    taken = tmp_path / "a-file"
    taken.write_text("")
    run = _check(tmp_path, DATA_DIR=str(taken))
    assert run.returncode != 0
    says = f"DATA_DIR must be a directory this process can make or use, got '{taken}'"
    assert f"ImproperlyConfigured: {says} (a file is there)" in run.stderr


def _check(tmp_path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` with ``settings`` in the environment, on a SQLite file of its own
    unless they name a database."""
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    env.update(settings)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )

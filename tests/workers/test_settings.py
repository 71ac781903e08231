from __future__ import annotations

import os

import pytest

from workers.settings import DEFAULT_REDIS_URL, WorkerSettings, settings_from_env


def test_defaults_are_safe_for_one_machine() -> None:
    settings = settings_from_env({})
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.torch_threads == (os.cpu_count() or 1)
    # Inference: one single-threaded forward per core.
    assert settings.model_threads == (os.cpu_count() or 1)
    assert settings.inference_torch_threads == 1
    assert settings.device == "auto"
    # Batch limits follow the device unless configured: GPUs want far larger batches.
    assert settings.max_batch_tokens is None and settings.max_batch_size is None
    assert settings.batch_limits("cpu") == (2048, 64)
    assert settings.batch_limits("cuda") == (32768, 1024)
    configured = settings_from_env({"WORKER_MAX_BATCH_TOKENS": "4096"})
    assert configured.batch_limits("cuda") == (4096, 1024)


def test_reads_the_environment() -> None:
    settings = settings_from_env(
        {
            "REDIS_URL": "redis://example:6379/3",
            "WORKER_MAX_BATCH_TOKENS": "2048",
            "WORKER_MAX_BATCH_SIZE": "16",
            "WORKER_MAX_WAIT_MS": "2.5",
            "WORKER_TORCH_THREADS": "3",
            "WORKER_MODEL_THREADS": "1",
            "WORKER_EMBED_CACHE_SIZE": "0",
            "WORKER_DEVICE": "CPU",
            "WORKER_LOG_TASKS": "yes",
        }
    )
    assert settings == WorkerSettings(
        redis_url="redis://example:6379/3",
        max_batch_tokens=2048,
        max_batch_size=16,
        max_wait_ms=2.5,
        torch_threads=3,
        model_threads=1,
        embed_cache_size=0,
        device="cpu",
        log_tasks=True,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_MAX_BATCH_SIZE", "0"),
        ("WORKER_MAX_BATCH_TOKENS", "lots"),
        ("WORKER_MAX_WAIT_MS", "-1"),
        ("WORKER_MODEL_THREADS", "0"),
        ("WORKER_DEVICE", "tpu"),
        ("WORKER_LOG_TASKS", "sometimes"),
    ],
)
def test_a_bad_value_fails_loudly(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        settings_from_env({name: value})


def test_a_gpu_at_the_cpu_default_price_is_warned_about() -> None:
    from workers.settings import default_price_warning

    assert default_price_warning("cpu", {}) is None
    assert default_price_warning("cuda", {"WORKER_PRICE_PER_HOUR": "3.50"}) is None
    warning = default_price_warning("cuda", {})
    assert warning is not None and "WORKER_PRICE_PER_HOUR" in warning
    assert default_price_warning("cuda", {"WORKER_PRICE_PER_HOUR": "  "}) == warning


def test_a_variable_the_image_requires_stops_the_worker_at_start_naming_it():
    """The worker image requires REDIS_URL (deploy/Dockerfile): without it a worker waited
    on a broker of its own, serving nobody, and looked healthy."""
    with pytest.raises(ValueError, match=r"^REDIS_URL must be set \(this image requires "):
        settings_from_env({"REQUIRED_ENV": "REDIS_URL"})
    with pytest.raises(ValueError, match=r"^REDIS_URL must be set"):
        settings_from_env({"REQUIRED_ENV": "REDIS_URL", "REDIS_URL": "  "})
    given = settings_from_env({"REQUIRED_ENV": "REDIS_URL", "REDIS_URL": "redis://r:6379/2"})
    assert given.redis_url == "redis://r:6379/2"
    assert settings_from_env({}).redis_url  # make run requires nothing: its defaults serve

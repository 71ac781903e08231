"""Worker configuration, read once from the environment with safe one-machine defaults.

Every value that differs between machines (broker address, batch sizes tuned per CPU/GPU,
thread counts) comes from an environment variable; nothing here imports torch or Django so
that reading the settings is cheap and side-effect free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache

# NOTE: batch defaults chosen with tests/benchmarks/bench_model.py on a 2-core AVX-512 CPU
# (fp32, 2 threads, 20-40-word texts); re-run it on new hardware, a GPU wants far larger
# batches. There, forward passes of ~2k padded tokens were fastest per text (bigger ones
# lose to cache misses: 64 x 128 tokens cost ~25 % more per token than 8 x 128); 64 rows
# caps batches of very short texts; waiting 2 ms lets concurrent requests share a pass
# while costing a lone request only ~2 ms (10 ms cut single-client throughput by ~40 %).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_BATCH_TOKENS = 2048
DEFAULT_MAX_BATCH_SIZE = 64
# NOTE: on a GPU the CPU's batches leave it waiting on Python. bench_gpu.py on an H200 (bf16,
# 8,192 texts of 23-51 tokens, one run): 2048 tokens / 64 rows 3,620 texts/s, 8192 / 256
# 16,969, 32768 / 1024 21,526, 65536 / 2048 25,728 (forwards 35 % of the time: the rest
# is Python, so bigger buys little more and costs latency). A GPU runs 32768 / 1024 unless
# WORKER_MAX_BATCH_TOKENS / WORKER_MAX_BATCH_SIZE say otherwise.
GPU_MAX_BATCH_TOKENS = 32768
GPU_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_WAIT_MS = 2.0
# What a CPU worker pool's hardware costs per hour unless WORKER_PRICE_PER_HOUR says.
DEFAULT_PRICE_PER_HOUR = "0.10"
# The dearest hardware price per hour a worker takes, in any currency (a GPU node is tens
# of USD, some 450,000 IDR): a price past it is a typo, whose cost per call overflowed the
# ledger and the operators' pages.
MAX_PRICE_PER_HOUR = Decimal(10) ** 12
DEFAULT_EMBED_CACHE_SIZE = 10_000
DEVICES = ("auto", "cpu", "cuda")
# The dtype forward passes compute in (see ``workers/runtime/precision.py: compute_dtype``).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    redis_url: str = DEFAULT_REDIS_URL
    # Padded tokens (rows x longest row) allowed in one forward pass: bounds activation
    # memory and keeps one batch's latency predictable. None: the device's default
    # (``batch_limits``).
    max_batch_tokens: int | None = None
    max_batch_size: int | None = None
    # How long the batcher holds the first waiting text for company before running it.
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    # Intra-op threads for training, and the CPU budget inference splits among its model
    # threads (``inference_torch_threads``).
    torch_threads: int = 1
    # Inference: forward passes run side by side, one per model thread, each with
    # torch_threads // model_threads intra-op threads (see runtime/batcher.py). The default,
    # one single-threaded forward per core, measured on this 2-core machine: the raw
    # encoder 1.4x, int8 1.4x and /v1/classify 1.15-1.25x the throughput of one forward on
    # two intra-op threads.
    model_threads: int = 1
    embed_cache_size: int = DEFAULT_EMBED_CACHE_SIZE
    device: str = "auto"
    # auto: on a GPU, bf16 autocast (fp16 without bf16) for forward passes of 8192 padded
    # tokens or more and fp32 below (measured faster there: runtime/precision.py), fp32 on
    # a CPU. fp32: always. bf16:
    # always, on a CPU too: a cost lever for CPUs with bf16 instructions (AVX512-BF16, AMX),
    # at the price of answers that vary in the 4th decimal with the batch a text rides in
    # (see runtime/precision.py: compute_dtype); emulated on other CPUs, ~14x slower. The
    # int8 tier computes as its int8 kernels do, whatever this says.
    precision: str = "auto"
    # Cost to serve: what this worker pool's hardware costs per hour (currency units, a
    # decimal string: money is never a float), recorded on every usage event.
    pool: str = "cpu"
    price_per_hour: str = DEFAULT_PRICE_PER_HOUR
    currency: str = "usd"
    # Celery's two INFO lines per task ("received", "succeeded"). Off by default: at
    # serving rates they cost ~4 % of the worker's CPU (yappi, 32 clients) and say nothing
    # the usage ledger does not; failures are still logged.
    log_tasks: bool = False
    # How often the worker writes its presence report for operators (workers/presence.py).
    presence_interval_s: float = 5.0

    def batch_limits(self, device_type: str) -> tuple[int, int]:
        """(max padded tokens, max rows) per forward pass on a ``cpu`` or ``cuda`` device:
        the configured values, else that device's defaults."""
        gpu = device_type == "cuda"
        tokens = self.max_batch_tokens or (
            GPU_MAX_BATCH_TOKENS if gpu else DEFAULT_MAX_BATCH_TOKENS
        )
        size = self.max_batch_size or (GPU_MAX_BATCH_SIZE if gpu else DEFAULT_MAX_BATCH_SIZE)
        return tokens, size

    @property
    def inference_torch_threads(self) -> int:
        return max(1, self.torch_threads // self.model_threads)


def int_setting(
    env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _optional_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    return int_setting(env, name, 0, minimum) if env.get(name, "").strip() else None


def float_setting(
    env: Mapping[str, str],
    name: str,
    default: float,
    minimum: float,
    maximum: float | None = None,
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")
    return value


def _price(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal amount, got {raw!r}") from None
    if not value.is_finite() or not 0 <= value <= MAX_PRICE_PER_HOUR:
        raise ValueError(f"{name} must be between 0 and {MAX_PRICE_PER_HOUR}, got {raw!r}")
    return str(value)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive); unset or empty is the first."""
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def required_env_check(env: Mapping[str, str], error: type[Exception]) -> None:
    """``error`` naming the variables ``REQUIRED_ENV`` lists (space-separated; each image
    names its own, deploy/Dockerfile) that are unset or empty. A deployment whose Secret
    lacked one ran on ``make run``'s defaults rather than stop and say so."""
    required = env.get("REQUIRED_ENV", "").split()
    missing = [name for name in required if not env.get(name, "").strip()]
    if missing:
        raise error(f"{', '.join(missing)} must be set (this image requires {' '.join(required)})")


def settings_from_env(env: Mapping[str, str] | None = None) -> WorkerSettings:
    """Build settings from ``env`` (default: ``os.environ``). Invalid values raise at start-up
    rather than silently falling back, so a mistyped deployment fails loudly."""
    env = os.environ if env is None else env
    # (a worker without REDIS_URL waited on a broker of its own, serving nobody)
    required_env_check(env, ValueError)
    device = _choice(env, "WORKER_DEVICE", DEVICES)
    return WorkerSettings(
        redis_url=env.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
        max_batch_tokens=_optional_int(env, "WORKER_MAX_BATCH_TOKENS", 256),
        max_batch_size=_optional_int(env, "WORKER_MAX_BATCH_SIZE", 1),
        max_wait_ms=float_setting(env, "WORKER_MAX_WAIT_MS", DEFAULT_MAX_WAIT_MS, 0.0),
        torch_threads=int_setting(env, "WORKER_TORCH_THREADS", os.cpu_count() or 1, 1),
        model_threads=int_setting(env, "WORKER_MODEL_THREADS", os.cpu_count() or 1, 1),
        embed_cache_size=int_setting(env, "WORKER_EMBED_CACHE_SIZE", DEFAULT_EMBED_CACHE_SIZE, 0),
        device=device,
        precision=_choice(env, "WORKER_PRECISION", PRECISIONS),
        pool=env.get("WORKER_POOL", "").strip() or "cpu",
        price_per_hour=_price(env, "WORKER_PRICE_PER_HOUR", DEFAULT_PRICE_PER_HOUR),
        currency=(env.get("WORKER_CURRENCY", "").strip() or "usd").lower(),
        log_tasks=_bool(env, "WORKER_LOG_TASKS"),
        presence_interval_s=float_setting(env, "WORKER_PRESENCE_INTERVAL_S", 5.0, 0.1),
    )


def default_price_warning(device_type: str, env: Mapping[str, str] | None = None) -> str | None:
    """A warning when a worker serves on a GPU at the CPU pool's default price: every call's
    cost to serve would be recorded at a CPU's hourly price, silently understating it (and
    overstating the margin). None when the price was set, or the device is a CPU."""
    env = os.environ if env is None else env
    if device_type == "cpu" or env.get("WORKER_PRICE_PER_HOUR", "").strip():
        return None
    return (
        f"serving on {device_type} at the default hardware price ({DEFAULT_PRICE_PER_HOUR}"
        " usd/hour, meant for a CPU): set WORKER_PRICE_PER_HOUR (and WORKER_POOL) to this"
        " machine's price, or cost to serve and margins are wrong"
    )


@cache
def get_settings() -> WorkerSettings:
    """The process-wide settings, read on first use."""
    return settings_from_env()

"""Where forward passes run and what they compute in: the device a worker resolves
(``WORKER_DEVICE``) and the dtype its precision setting (``WORKER_PRECISION``) gives there."""

from __future__ import annotations

import torch

from workers.settings import PRECISIONS


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it torch
    emulates bf16 with conversions: measured on an AVX2-only EPYC, one thread, 32 texts,
    192 ms in fp32 against 2,680 ms under bf16 autocast."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """What ``precision`` (``WORKER_PRECISION``: auto, fp32 or bf16) computes in on
    ``device``: bf16 autocast (fp16 on a GPU without bf16) or plain fp32.

    ``auto`` is half precision on a GPU and fp32 on a CPU. NOTE: bf16 answers depend on the
    batch a text rides in (its padding changes the kernels' rounding): measured, 16 product
    reviews alone against in one batch differ by up to 8.7e-4 in their embeddings under
    emulated bf16 and 9.2e-8 in fp32; 32 texts under native bf16 (a Zen 5 with AVX512-BF16)
    8.0e-4 against 1.2e-7. So the same text can get scores that differ in the 4th decimal
    from one call to the next. A CPU pool takes bf16 (2.75-2.90x fp32 on that Zen 5,
    bench_economics.py, same accuracy on both labelled sets) only when its operator says
    so."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


# On a GPU, ``auto`` computes a forward pass in half precision only from this many padded
# tokens (rows x the longest row), smaller ones in fp32. Measured on an H200 (torch 2.11,
# bench_gpu.py and a /v1/classify stack, 2026-11-29): bf16 autocast was slower than fp32 below
# it (4,110 against 6,918 texts/s in 2048-token batches; a text alone 2.22 ms against 1.67 ms)
# and faster from it (18,614 against 16,163 at 8192 tokens, 27,548 against 19,507 at 32768);
# 32 one-input clients, whose batches are small, got 180.6 inputs/s from a worker under
# autocast and 500.9 in fp32 (autocast's casts and dispatch cost the worker 6.95 against 2.94
# ms of CPU an input). Between 2048 and 8192 nothing was measured. The switched worker in
# that stack (2026-12-01, two alternating rounds, 6 s windows; fp32 in brackets): 32 one-input
# clients 588.0 and 590.3 inputs/s (553.1, 598.2), 4 clients x 96 inputs 5,748 and 6,024
# (4,923, 5,532), 16 x 96 5,631 and 6,167 (5,287, 5,663); switching at 32768 tokens instead
# gave 579.1 / 544.2, 5,759 / 5,337 and 5,663 / 5,343: no better.
AUTO_GPU_HALF_FROM_TOKENS = 8192


def half_from_tokens(precision: str, device: torch.device) -> int:
    """The smallest forward pass (padded tokens) that computes in the half precision
    ``compute_dtype`` chose; smaller ones run in fp32. 0: every pass. Only ``auto`` on a GPU
    switches by size; an explicit ``bf16`` is every pass, as its operator asked."""
    return AUTO_GPU_HALF_FROM_TOKENS if precision == "auto" and device.type == "cuda" else 0


def emulated_bf16(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether computing in ``dtype`` on ``device`` means bf16 that torch emulates."""
    return device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16()

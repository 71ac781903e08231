"""Building ClassifyRequests for the tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from workers.contract import CONTRACT_VERSION, ClassifyRequest, Example


def make_request(
    inputs: list[str],
    *,
    labels: list[str] | None = None,
    examples: list[Example] | None = None,
    **overrides: Any,
) -> ClassifyRequest:
    request: ClassifyRequest = {
        "v": CONTRACT_VERSION,
        "request_id": f"req_{uuid.uuid4().hex}",
        "tenant_id": "ten_test",
        "api_key_id": "key_test",
        "livemode": False,
        "model": "minilm-l6",
        "base_model": "minilm-l6",
        "inputs": inputs,
        "labels": labels,
        "examples": examples,
        "deadline": time.time() + 30,
    }
    request.update(overrides)  # type: ignore[typeddict-item]
    return request


def lora_model_file(seed: int, *, labels: int = 3, rank: int = 4) -> bytes:
    """A LoRA model file for minilm-l6 with random adapters on every layer's query and
    value and a random head: a stand-in for a fine-tuned model, different for every seed."""
    import torch

    from workers.runtime.finetuned import model_file_write

    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in range(6):
        for target in ("query", "value"):
            lora[f"{layer}.{target}.A"] = torch.randn(rank, 384, generator=generator) * 0.05
            lora[f"{layer}.{target}.B"] = torch.randn(384, rank, generator=generator) * 0.05
    return model_file_write(
        base_model="minilm-l6",
        method="lora",
        labels=[f"l{i}" for i in range(labels)],
        head_weight=torch.randn(labels, 384, generator=generator),
        head_bias=torch.randn(labels, generator=generator),
        lora=lora,
        lora_rank=rank,
        lora_alpha=2.0 * rank,
    )

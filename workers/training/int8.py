"""The int8 variant of a fine-tuned model, measured where the model itself was: the same head
on int8 weights, on the same validation split. The platform offers the variant (a second
model id, billed at the cheaper tier) only when the accuracy it loses is within its
threshold; the worker only measures, and serving runs exactly what was measured:

- ``head``: the validation texts through the process's ``minilm-l6-int8`` encoder (loaded
  once, the one inference workers batch on), then the head;
- ``lora``: the adapters merged into a copy of the fp32 weights, that copy quantised
  (``runtime.finetuned.int8_body``, as serving does), then the head.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from workers.contract import INT8_BASE_MODELS
from workers.runtime.encoder import Encoder, load_encoder
from workers.runtime.finetuned import int8_body, lora_merge

from . import head as head_method
from . import lora as lora_method
from .head import Step
from .metrics import classification_metrics


def int8_metrics(
    *,
    base_model: str,
    encoder: Encoder,
    val_ids: Sequence[Sequence[int]],
    val_labels: Sequence[str],
    labels: Sequence[str],
    head: tuple[torch.Tensor, torch.Tensor],
    fp32_accuracy: float,
    lora: dict[str, torch.Tensor],
    lora_rank: int,
    lora_alpha: float,
    step: Step,
    threads: int | None = None,
) -> dict[str, Any]:
    """``int8_accuracy``, ``int8_macro_f1``, ``int8_per_label_f1`` and
    ``int8_accuracy_delta`` (percentage points, int8 - fp32); empty when ``base_model`` has
    no int8 tier (it is one already). ``step()`` runs after every embedding batch."""
    int8_base = INT8_BASE_MODELS.get(base_model)
    if int8_base is None:
        return {}
    if lora:
        merged = copy.deepcopy(encoder.model)
        lora_merge(merged, lora, rank=lora_rank, alpha=lora_alpha)
        body = int8_body(merged, encoder.device)
        del merged
        x_val = lora_method.embed_with(body, val_ids, step=step)
    else:
        int8_encoder = load_encoder(int8_base, device=str(encoder.device), threads=threads)
        x_val = head_method.embed_sorted(int8_encoder, val_ids, step)
    predicted = head_method.head_predict(x_val, *head).tolist()
    measured = classification_metrics(val_labels, [labels[i] for i in predicted], labels)
    accuracy = float(measured["accuracy"])  # type: ignore[arg-type]
    return {
        "int8_accuracy": accuracy,
        "int8_macro_f1": measured["macro_f1"],
        "int8_per_label_f1": measured["per_label_f1"],
        "int8_accuracy_delta": round(100 * (accuracy - fp32_accuracy), 2),
    }

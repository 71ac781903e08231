"""The int8 variant of a fine-tuned model, measured where the model itself was: the same head
on int8 weights, on the same validation split. The platform offers the variant (a second
model id, billed at the cheaper tier) only when the accuracy it loses is within its
threshold; the worker only measures, and CPU serving runs exactly what was measured (on the
CPU, wherever the training ran):

- ``head``: the validation texts through the process's ``minilm-l6-int8`` encoder (loaded
  once, the one inference workers batch on), then the head. The embeddings are cached in
  the artifact store by the texts and the int8 numerics (a fingerprint: one probe sentence's
  int8 embedding), so a second job on the same split skips the encoder, while vectors
  from other int8 numerics (a change to ``quantize_int8``) are never reused;
- ``lora``: the validation texts through the same ``minilm-l6-int8`` encoder with the
  model's adapter beside the int8 weights (``finetuned.lora_adapter``, as serving runs it),
  then the head.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from workers.artifacts import ArtifactStore
from workers.contract import INT8_BASE_MODELS
from workers.runtime.encoder import Encoder, load_encoder
from workers.runtime.finetuned import lora_adapter

from . import head as head_method
from .head import Step
from .metrics import accuracy_delta_points, classification_metrics

FINGERPRINT_PROBE = "The quick brown fox jumps over the lazy dog while the parcel is late."
_fingerprints: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def numerics_fingerprint(encoder: Encoder) -> str:
    """What identifies an encoder's numerics: the hash of one probe sentence's embedding
    (a single forward pass, once per loaded encoder)."""
    fingerprint = _fingerprints.get(encoder.model)
    if fingerprint is None:
        vector = encoder.embed([FINGERPRINT_PROBE]).numpy().tobytes()
        fingerprint = _fingerprints[encoder.model] = hashlib.sha256(vector).hexdigest()[:16]
    return fingerprint


def int8_metrics(
    *,
    store: ArtifactStore,
    owner: str,
    base_model: str,
    val_source: str,
    val_texts: Sequence[str],
    val_labels: Sequence[str],
    labels: Sequence[str],
    head: tuple[torch.Tensor, torch.Tensor],
    fp32_predicted: Sequence[str],
    lora: dict[str, torch.Tensor],
    lora_rank: int,
    lora_alpha: float,
    step: Step,
    threads: int | None = None,
) -> dict[str, Any]:
    """``int8_accuracy``, ``int8_macro_f1``, ``int8_per_label_f1`` and
    ``int8_accuracy_delta`` (percentage points, int8 - fp32, from the rows each got right and
    rounded toward the loss); empty when ``base_model`` has
    no int8 tier (it is one already). ``step()`` runs after every embedding batch.
    ``val_source``: the dataset file the validation texts are rows of (their cached
    embeddings leave with it)."""
    int8_base = INT8_BASE_MODELS.get(base_model)
    if int8_base is None:
        return {}
    # NOTE: on the CPU even when training ran on a GPU: int8 is a CPU tier (dynamic int8
    # kernels are CPU kernels; a GPU worker serves the int8 id in bf16, at least as close to
    # fp32), so what is measured is what CPU workers will serve.
    int8_encoder = load_encoder(int8_base, device="cpu", threads=threads)
    if lora:
        adapter = lora_adapter(int8_encoder.model, lora, rank=lora_rank, alpha=lora_alpha)
        val_ids = [t.ids for t in int8_encoder.tokenize(val_texts)]
        x_val = head_method.embed_sorted(int8_encoder, val_ids, step, adapter)
    else:
        texts = hashlib.sha256("\x1f".join(val_texts).encode()).hexdigest()
        x_val, _, _ = head_method.embeddings_get(
            store=store,
            encoder=int8_encoder,
            owner=owner,
            source=val_source,
            more=f"{texts}.{numerics_fingerprint(int8_encoder)}",
            texts=val_texts,
            step=step,
        )
    predicted = [labels[i] for i in head_method.head_predict(x_val, *head).tolist()]
    measured = classification_metrics(val_labels, predicted, labels)
    return {
        "int8_accuracy": measured["accuracy"],
        "int8_macro_f1": measured["macro_f1"],
        "int8_per_label_f1": measured["per_label_f1"],
        "int8_accuracy_delta": accuracy_delta_points(val_labels, predicted, fp32_predicted),
    }

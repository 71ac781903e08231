"""Fine-tuned models: the file format training writes and serving reads, and an LRU of loaded
models per worker.

One model is one safetensors file in the artifact store (named by its hash): the head
(``head.weight``, ``head.bias``: a linear layer over the encoder's mean-pooled, normalised
embedding, scaled by ``HEAD_SCALE``), LoRA factors when the method was ``lora``
(``lora.<layer>.<target>.A``/``.B``), and string metadata (format version, base model,
method, labels, LoRA rank/alpha). safetensors, not pickle: loading a file can never run code.

Serving: a ``head`` model only adds a matrix product after the shared encoder, so its
requests ride the shared dynamic batcher with everyone else's. A ``lora`` model changes the
encoder itself: its adapters are merged into a private copy of the weights (same speed as
the base model, no per-request adapter cost), kept in a small LRU because each copy is the
size of the encoder. Each merged copy has its own dynamic batcher, so concurrent requests for
one adapter share forward passes (batched by adapter) and each is charged its token share of
them, never the time it spent queued behind another.

The int8 tier: the same model file is also served on the int8 base model
(``contract.INT8_BASE_MODELS``) when the platform offers the variant. A head variant rides
the shared int8 encoder's batcher; a LoRA variant merges its adapters into a copy of the
fp32 weights first and quantises the result (quantising before merging would lose the
adapters' small updates to rounding). The LRU is keyed by (artifact, base model), so a
model's fp32 and int8 copies never collide.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from workers.contract import INT8_BASE_MODELS
from workers.runtime.batcher import DynamicBatcher
from workers.runtime.encoder import BertModel, Encoder, int8_body

FORMAT = "margin-finetune/1"
# Logits are HEAD_SCALE * (W x + b) on unit-length embeddings: the same x20 scale the encoder
# was trained at, so a head initialised at the class centroids starts out well calibrated.
HEAD_SCALE = 20.0
# Which slice of the fused query/key/value projection each LoRA target adapts.
QKV_TARGETS = {"query": 0, "key": 1, "value": 2}


class ModelFileError(ValueError):
    """Not a model file this worker understands."""


@dataclass(frozen=True)
class FineTunedModel:
    base_model: str
    method: str
    labels: list[str]
    head_weight: torch.Tensor  # (labels, dim)
    head_bias: torch.Tensor  # (labels,)
    lora: dict[str, torch.Tensor]
    lora_rank: int = 0
    lora_alpha: float = 0.0

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return HEAD_SCALE * (embeddings @ self.head_weight.T + self.head_bias)

    def merged_encoder(self, encoder: Encoder, encoder_id: str, *, int8: bool = False) -> Encoder:
        """A copy of ``encoder`` with this model's adapters merged into its weights; with
        ``int8``, the merged weights as the int8 tier serves them (``int8_body``)."""
        model = copy.deepcopy(encoder.model)
        lora_merge(model, self.lora, rank=self.lora_rank, alpha=self.lora_alpha)
        if int8:
            model = int8_body(model, encoder.device)
        return encoder.derive(encoder_id, model)

    def servable_on(self, base_model: str) -> bool:
        """Trained on ``base_model``, or ``base_model`` is the int8 tier of the one it was."""
        return base_model in (self.base_model, INT8_BASE_MODELS.get(self.base_model))


def lora_merge(model: BertModel, lora: dict[str, torch.Tensor], *, rank: int, alpha: float) -> None:
    """W_target += (alpha / rank) * B @ A, in place, for every adapted slice."""
    scale = alpha / rank
    with torch.no_grad():
        for name, a in lora.items():
            if not name.endswith(".A"):
                continue
            layer, target, _ = name.split(".")
            b = lora[name[:-2] + ".B"]
            qkv = model.layers[int(layer)].qkv
            assert isinstance(qkv, torch.nn.Linear)
            d = qkv.in_features
            offset = QKV_TARGETS[target] * d
            delta = scale * (b @ a)
            qkv.weight[offset : offset + d] += delta.to(qkv.weight.device, qkv.weight.dtype)


def model_file_write(
    *,
    base_model: str,
    method: str,
    labels: list[str],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    lora: dict[str, torch.Tensor] | None = None,
    lora_rank: int = 0,
    lora_alpha: float = 0.0,
) -> bytes:
    tensors = {
        "head.weight": head_weight.detach().float().contiguous().cpu(),
        "head.bias": head_bias.detach().float().contiguous().cpu(),
    }
    for name, value in (lora or {}).items():
        tensors[f"lora.{name}"] = value.detach().float().contiguous().cpu()
    metadata = {
        "format": FORMAT,
        "base_model": base_model,
        "method": method,
        "labels": json.dumps(labels),
        "lora_rank": str(lora_rank),
        "lora_alpha": str(lora_alpha),
    }
    data: bytes = save(tensors, metadata=metadata)
    return data


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors: 8-byte little-endian header length, then a JSON header with __metadata__.
    if len(data) < 8:
        raise ModelFileError("file too short")
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError:
        raise ModelFileError("unreadable header") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"unknown format {meta.get('format')!r}")
    return dict(meta)


def model_file_read(data: bytes) -> FineTunedModel:
    meta = _metadata(data)
    tensors = load(data)
    lora = {k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")}
    return FineTunedModel(
        base_model=meta["base_model"],
        method=meta["method"],
        labels=list(json.loads(meta["labels"])),
        head_weight=tensors["head.weight"],
        head_bias=tensors["head.bias"],
        lora=lora,
        lora_rank=int(meta.get("lora_rank", "0")),
        lora_alpha=float(meta.get("lora_alpha", "0")),
    )


@dataclass(frozen=True)
class Loaded:
    model: FineTunedModel
    encoder: Encoder | None  # a private merged encoder for LoRA models; None: the shared one
    batcher: DynamicBatcher | None  # the private encoder's own batcher


class FineTunedCache:
    """LRU of loaded fine-tuned models, keyed by (artifact hash, base model served on).
    ``fetch`` reads the file (from the artifact store) on a miss; ``make_batcher`` builds the
    dynamic batcher of a LoRA model's merged encoder, closed when the model is evicted."""

    def __init__(
        self,
        capacity: int,
        fetch: Callable[[str], bytes],
        make_batcher: Callable[[Encoder], DynamicBatcher],
    ) -> None:
        self.capacity = max(1, capacity)
        self._fetch = fetch
        self._make_batcher = make_batcher
        self._items: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        artifact: str,
        base_encoder: Callable[[str], Encoder],
        *,
        base_model: str | None = None,
    ) -> Loaded:
        """The model in ``artifact`` as served on ``base_model`` (None: the one it was trained
        on). Raises ModelFileError when it cannot be served there. A LoRA model's batcher
        may be closed by an eviction after this returns: submitting then raises
        ``BatcherClosedError``, and asking again loads the model afresh."""
        key = (artifact, base_model or "")
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        # Loaded outside the lock: reading and merging take ~100 ms and must not block
        # requests for models already loaded. Two threads may load the same one; one wins.
        model = model_file_read(self._fetch(artifact))
        served_on = base_model or model.base_model
        if not model.servable_on(served_on):
            raise ModelFileError(f"trained on {model.base_model}, not {served_on}")
        encoder = None
        if model.lora:
            int8 = served_on != model.base_model
            encoder = model.merged_encoder(
                base_encoder(model.base_model),
                f"ft:{artifact}:int8" if int8 else f"ft:{artifact}",
                int8=int8,
            )
        closing: list[Loaded] = []
        with self._lock:
            winner = self._items.get(key)
            if winner is None:
                batcher = self._make_batcher(encoder) if encoder is not None else None
                winner = self._items[key] = Loaded(model, encoder, batcher)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                closing.append(self._items.popitem(last=False)[1])
        for evicted in closing:
            _close(evicted)
        return winner

    def close(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for loaded in items:
            _close(loaded)


def _close(loaded: Loaded) -> None:
    # Queued texts are still embedded; the batcher's threads exit once it is drained.
    if loaded.batcher is not None:
        loaded.batcher.close(timeout=0)

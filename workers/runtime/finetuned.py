"""Fine-tuned models: the file format training writes and serving reads, and an LRU of loaded
models per worker.

One model is one safetensors file in the artifact store (named by its hash): the head
(``head.weight``, ``head.bias``: a linear layer over the encoder's mean-pooled, normalised
embedding, scaled by ``HEAD_SCALE``), LoRA factors when the method was ``lora``
(``lora.<layer>.<target>.A``/``.B``), and string metadata (format version, base model,
method, labels, LoRA rank/alpha). safetensors, not pickle: loading a file can never run code.

Serving: every fine-tuned model rides the shared encoder's dynamic batcher with everyone
else's requests, so many tenants never mean many encoder copies. A ``head`` model adds a
matrix product after the shared encoder. A ``lora`` model's rows carry its adapter into the
shared forward pass (``bert.Adapter``): each layer adds the adapter's low-rank update to
those rows' query/key/value projections, grouped by adapter, while every other row runs on
the shared weights alone (S-LoRA/Punica-style serving, without merged copies). An adapter
is ~0.9 MB against the encoder's ~90 MB, so the LRU of loaded models can be large.

The int8 tier: the same model file is also served on the int8 base model
(``contract.INT8_BASE_MODELS``) when the platform offers the variant. A head variant rides
the shared int8 encoder's batcher; a LoRA variant's adapter runs in full precision beside
the int8 weights (its small updates are never rounded to int8), with the int8 body's
activation smoothing folded into it. Fine-tuning measures the variant the same way
(``training/int8.py``). The LRU is keyed by (artifact, base model), so a model's fp32 and
int8 forms never collide.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from safetensors.torch import load, save

from workers.contract import INT8_BASE_MODELS
from workers.runtime.bert import Adapter, BertModel, _Layer

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

    def servable_on(self, base_model: str) -> bool:
        """Trained on ``base_model``, or ``base_model`` is the int8 tier of the one it was."""
        return base_model in (self.base_model, INT8_BASE_MODELS.get(self.base_model))


def lora_adapter(
    model: BertModel, lora: dict[str, torch.Tensor], *, rank: int, alpha: float
) -> Adapter:
    """The adapters in ``lora`` (``<layer>.<target>.A|B``) laid out for ``model``'s forward
    pass, on its device. Where the body's activations were smoothed (the int8 tier divides
    each layer's input by ``in_scale``), ``a`` is multiplied by that scale, so the update is
    the one the adapters were trained to make on the unsmoothed input."""
    scale = alpha / rank
    targets: dict[int, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for name, a in sorted(lora.items()):
        if name.endswith(".A"):
            number, target, _ = name.split(".")
            targets.setdefault(int(number), []).append((target, a, lora[name[:-2] + ".B"]))
    device = model.word.weight.device
    a_by_layer: list[torch.Tensor | None] = []
    b_by_layer: list[torch.Tensor | None] = []
    for index, layer in enumerate(cast(list[_Layer], list(model.layers))):
        adapted = targets.get(index)
        if not adapted:
            a_by_layer.append(None)
            b_by_layer.append(None)
            continue
        d = int(layer.attn_norm.normalized_shape[0])
        stacked_a = torch.cat([a.float() for _, a, _ in adapted])
        in_scale = layer.in_scale
        if in_scale is not None:
            stacked_a = stacked_a * in_scale.float().cpu()
        placed_b = torch.zeros(3 * d, stacked_a.shape[0])
        column = 0
        for target, a, b in adapted:
            offset, width = QKV_TARGETS[target] * d, a.shape[0]
            placed_b[offset : offset + d, column : column + width] = scale * b.float()
            column += width
        a_by_layer.append(stacked_a.contiguous().to(device))
        b_by_layer.append(placed_b.to(device))
    return Adapter(tuple(a_by_layer), tuple(b_by_layer))


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
    adapter: Adapter | None  # a LoRA model's adapter, laid out for the body it is served on


class FineTunedCache:
    """LRU of loaded fine-tuned models, keyed by (artifact hash, base model served on).
    ``fetch`` reads the file (from the artifact store) on a miss."""

    def __init__(self, capacity: int, fetch: Callable[[str], bytes]) -> None:
        self.capacity = max(1, capacity)
        self._fetch = fetch
        self._items: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(
        self,
        artifact: str,
        body: Callable[[str], BertModel],
        *,
        base_model: str | None = None,
    ) -> Loaded:
        """The model in ``artifact`` as served on ``base_model`` (None: the one it was trained
        on), whose shared body ``body(base_model)`` gives. Raises ModelFileError when it
        cannot be served there."""
        key = (artifact, base_model or "")
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        # Loaded outside the lock: reading a file must not block requests for models already
        # loaded. Two threads may load the same one; one wins.
        model = model_file_read(self._fetch(artifact))
        served_on = base_model or model.base_model
        if not model.servable_on(served_on):
            raise ModelFileError(f"trained on {model.base_model}, not {served_on}")
        adapter = None
        if model.lora:
            adapter = lora_adapter(
                body(served_on), model.lora, rank=model.lora_rank, alpha=model.lora_alpha
            )
        loaded = Loaded(model, adapter)
        with self._lock:
            self._items[key] = self._items.get(key, loaded)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return self._items[key]

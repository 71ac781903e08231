"""The ``lora`` method: low-rank adapters on the encoder's attention projections, trained
together with the classification head.

Written here rather than with PEFT: the encoder fuses query/key/value into one Linear (one
GEMM instead of three, see runtime/encoder.py), which PEFT's module-name targeting cannot
address, and the adapter is ~40 lines. Each adapted projection ``W`` becomes
``W + (alpha / rank) * B @ A`` with ``B`` initialised to zero, so training starts exactly at
the frozen encoder (and at the head trained on it) and can only move away from it on
purpose. Serving merges ``B @ A`` into a copy of the weights (runtime/finetuned.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers import liveness
from workers.runtime.bert import BertModel, mean_pool, pad_ids
from workers.runtime.encoder import Encoder
from workers.runtime.finetuned import HEAD_SCALE, QKV_TARGETS

from .head import Step

LoraEpochHook = Callable[[int, float, float], None]  # (epoch, train loss, validation accuracy)


class LoRAQKV(nn.Module):
    """The fused QKV projection plus rank-``r`` updates on the chosen slices."""

    def __init__(
        self, base: nn.Linear, targets: Sequence[str], rank: int, alpha: float, dropout: float
    ) -> None:
        super().__init__()
        self.base = base
        self.d = base.in_features
        self.scale = alpha / rank
        self.targets = [t for t in QKV_TARGETS if t in targets]
        self.dropout = nn.Dropout(dropout)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for target in self.targets:
            a = torch.empty(rank, self.d)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and PEFT) do
            self.A[target] = nn.Parameter(a)
            self.B[target] = nn.Parameter(torch.zeros(self.d, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = self.dropout(x)
        parts = []
        for target in QKV_TARGETS:
            if target in self.targets:
                parts.append((h @ self.A[target].T) @ self.B[target].T * self.scale)
            else:
                parts.append(torch.zeros_like(out[..., : self.d]))
        delta: torch.Tensor = out + torch.cat(parts, dim=-1)
        return delta


def adapted_model(
    encoder: Encoder, *, targets: Sequence[str], rank: int, alpha: float, dropout: float
) -> tuple[BertModel, list[LoRAQKV]]:
    """A private copy of the encoder with adapters, on the encoder's device; only the
    adapters require gradients."""
    model = copy.deepcopy(encoder.model)
    for param in model.parameters():
        param.requires_grad_(False)
    adapters = []
    for layer in model.layers:
        assert isinstance(layer.qkv, nn.Linear)
        adapter = LoRAQKV(layer.qkv, targets, rank, alpha, dropout)
        layer.qkv = adapter
        adapters.append(adapter)
    return model.to(encoder.device), adapters


def lora_state(adapters: Sequence[LoRAQKV]) -> dict[str, torch.Tensor]:
    """Adapter tensors named ``<layer>.<target>.A|B`` (the model file's layout)."""
    state: dict[str, torch.Tensor] = {}
    for index, adapter in enumerate(adapters):
        for target in adapter.targets:
            state[f"{index}.{target}.A"] = adapter.A[target].detach().cpu().clone()
            state[f"{index}.{target}.B"] = adapter.B[target].detach().cpu().clone()
    return state


def _device(model: BertModel) -> torch.device:
    return model.word.weight.device


def embed_with(
    model: BertModel, ids: Sequence[Sequence[int]], batch: int = 32, step: Step | None = None
) -> torch.Tensor:
    """Embeddings (on the CPU) of tokenized texts through ``model``, length-bucketed;
    ``step()`` after each batch when given (a cancellation boundary, which beats), else the
    worker's liveness beat: an epoch's validation pass and the final one take no step, and
    a large validation file (its tokens are not in the job's budget) held the solo pool's
    loop past the probe's threshold without a beat."""
    model.eval()
    device = _device(model)
    out = []
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = [ids[i] for i in order[start : start + batch]]
            tokens, mask = (t.to(device) for t in pad_ids(chunk))
            out.append(mean_pool(model(tokens, mask), mask).cpu())
            if step is not None:
                step()  # (which beats: workers.training.tasks)
            else:
                liveness.beat()
    vectors = torch.cat(out)
    result = torch.empty_like(vectors)
    result[order] = vectors
    return result


def lora_train(
    *,
    model: BertModel,
    adapters: Sequence[LoRAQKV],
    train_ids: Sequence[Sequence[int]],
    train_y: torch.Tensor,
    val_ids: Sequence[Sequence[int]],
    val_y: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    on_epoch: LoraEpochHook,
    step: Step,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train adapters and head jointly; returns the head (adapters are trained in place).
    ``step()`` runs after every optimiser step: the cancellation boundary."""
    device = _device(model)
    weight = nn.Parameter(head[0].clone().to(device))
    bias = nn.Parameter(head[1].clone().to(device))
    targets = train_y.to(device)
    params = [p for a in adapters for p in a.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([*params, weight, bias], lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_ids), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            tokens, mask = (t.to(device) for t in pad_ids([train_ids[i] for i in chunk]))
            vectors = mean_pool(model(tokens, mask), mask)
            loss = F.cross_entropy(HEAD_SCALE * (vectors @ weight.T + bias), targets[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chunk)
            step()
        val = embed_with(model, val_ids)
        w, b = weight.detach().cpu(), bias.detach().cpu()
        accuracy = float((((val @ w.T + b).argmax(dim=1)) == val_y).float().mean())
        on_epoch(epoch, total / len(train_ids), accuracy)
    return weight.detach().cpu().clone(), bias.detach().cpu().clone()

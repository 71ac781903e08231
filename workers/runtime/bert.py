"""The BERT body all-MiniLM-L6-v2 runs in, written out (no transformers at runtime): its
config, layers with fused query/key/value, LoRA deltas for the rows of a mixed batch, the
padded forward and the packed one (padding only in attention), the renaming of a Hugging
Face state dict, and the padding and mean pooling around it. ``encoder.Encoder`` puts a
tokenizer and loading in front of it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {raw['hidden_act']!r}")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, eq=False)
class Adapter:
    """One fine-tuned model's LoRA update of every layer's fused query/key/value projection,
    laid out for a batch that mixes it with other rows: layer i adds ``(x @ a[i].T) @
    b[i].T`` to its rows' projections (``a``: the adapted targets' A factors stacked, ``b``:
    their B factors scaled by alpha / rank, placed at each target's slice of the 3 x hidden
    outputs; None where a layer has no adapter). Built for one body by
    ``finetuned.lora_adapter`` (the int8 body's smoothing is folded into ``a``)."""

    a: tuple[torch.Tensor | None, ...]
    b: tuple[torch.Tensor | None, ...]


# Rows of a batch that share one adapter: (their row indices, on the model's device; it).
AdapterRows = tuple[torch.Tensor, Adapter]


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        # NOTE: query/key/value are fused into one Linear at load time: one GEMM instead of
        # three, which is measurably faster on CPU for a model this small.
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ff_in = nn.Linear(d, cfg.intermediate_size)
        self.ff_out = nn.Linear(cfg.intermediate_size, d)
        self.ff_norm = nn.LayerNorm(d, eps=eps)
        # Per-channel scales by which this layer's input (in_scale) and its attention
        # block's output (mid_scale) were divided, set only by the int8 tier's activation
        # smoothing (workers/runtime/int8.py); the residual adds multiply them back.
        self.in_scale: torch.Tensor | None
        self.mid_scale: torch.Tensor | None
        self.register_buffer("in_scale", None)
        self.register_buffer("mid_scale", None)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        deltas: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """``deltas``: (rows, a, b) of the LoRA adapters of some rows (``Adapter``)."""
        b, n, d = x.shape
        qkv = self.qkv(x)
        for rows, lora_a, lora_b in deltas:
            # Only the adapted rows pay: two thin products (rank x targets wide).
            delta = (x.index_select(0, rows) @ lora_a.T) @ lora_b.T
            qkv.index_add_(0, rows, delta.to(qkv.dtype))
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(
            _residual(self.attn_out(ctx.transpose(1, 2).reshape(b, n, d)), x, self.in_scale)
        )
        out: torch.Tensor = self.ff_norm(
            _residual(self.ff_out(F.gelu(self.ff_in(x))), x, self.mid_scale)
        )
        return out

    def forward_packed(
        self,
        x: torch.Tensor,
        where: torch.Tensor,
        shape: tuple[int, int],
        mask: torch.Tensor,
        deltas: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """``forward`` on packed tokens: ``x`` is (real tokens, hidden), ``where`` their flat
        positions in the (rows, longest) padded layout ``shape``; ``deltas`` name their
        adapted rows by token. Every position-wise step (the projections, the feed-forward
        layers, the norms) runs on the real tokens alone; attention, which mixes
        positions, runs in the padded layout, with zeros in the padding that the mask hides."""
        (b, n), d = shape, x.shape[1]
        qkv = self.qkv(x)
        for tokens, lora_a, lora_b in deltas:
            delta = (x.index_select(0, tokens) @ lora_a.T) @ lora_b.T
            qkv.index_add_(0, tokens, delta.to(qkv.dtype))
        padded = qkv.new_zeros(b * n, 3 * d).index_copy_(0, where, qkv)
        q, k, v = padded.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ctx = ctx.transpose(1, 2).reshape(b * n, d).index_select(0, where)
        x = self.attn_norm(_residual(self.attn_out(ctx), x, self.in_scale))
        out: torch.Tensor = self.ff_norm(
            _residual(self.ff_out(F.gelu(self.ff_in(x))), x, self.mid_scale)
        )
        return out


def _residual(out: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``out + x``, where ``x`` was smoothed (divided by ``scale``) if a scale is given."""
    return out + x if scale is None else torch.addcmul(out, x, scale)


class BertModel(nn.Module):
    """BERT encoder body (no pooler) returning the last hidden state."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, d)
        self.position = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type = nn.Embedding(cfg.type_vocab_size, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, lora: Sequence[AdapterRows] = ()
    ) -> torch.Tensor:
        """The last hidden state; ``lora``: rows that run with a fine-tuned model's adapter
        (every other row runs on the shared weights alone)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        # Single-segment inputs: token type 0 everywhere, i.e. row 0 of the table.
        x = self.word(ids) + self.position(positions) + self.token_type.weight[0]
        x = self.norm(x)
        # Boolean SDPA mask, True = may attend; broadcast over heads and query positions.
        attn_mask = mask[:, None, None, :]
        for i, layer in enumerate(self.layers):
            x = layer(x, attn_mask, _layer_deltas(lora, i))
        hidden: torch.Tensor = x
        return hidden

    def embed_packed(
        self, ids: torch.Tensor, mask: torch.Tensor, lora: Sequence[AdapterRows] = ()
    ) -> torch.Tensor:
        """``mean_pool(forward(ids, mask, lora), mask)`` with the padding left out of all but
        attention (``_Layer.forward_packed``): a batch's rows are of different lengths, and
        its padded tokens would otherwise cost as much as real ones in every projection."""
        b, n = ids.shape
        where = mask.reshape(-1).nonzero().squeeze(1)
        rows = torch.div(where, n, rounding_mode="floor")
        x = self.word(ids.reshape(-1).index_select(0, where))
        x = self.norm(x + self.position(where - rows * n) + self.token_type.weight[0])
        attn_mask = mask[:, None, None, :]
        # Each adapter's rows, as the tokens of those rows.
        adapted = [(torch.isin(rows, batch_rows).nonzero().squeeze(1), a) for batch_rows, a in lora]
        layers: list[_Layer] = list(self.layers)  # type: ignore[arg-type]
        for i, layer in enumerate(layers):
            x = layer.forward_packed(x, where, (b, n), attn_mask, _layer_deltas(adapted, i))
        hidden = x.float()  # pooled in fp32, as ``mean_pool`` pools
        sums = hidden.new_zeros(b, hidden.shape[1]).index_add_(0, rows, hidden)
        return F.normalize(sums / mask.sum(dim=1, keepdim=True), p=2.0, dim=1)


def _layer_deltas(
    lora: Sequence[AdapterRows], layer: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(rows, a, b) of the adapters that change ``layer``."""
    deltas = []
    for rows, adapter in lora:
        a, b = adapter.a[layer], adapter.b[layer]
        if a is not None and b is not None:
            deltas.append((rows, a, b))
    return deltas


def _hf_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BertModel state dict to this module's names, fusing QKV."""
    out = {
        "word.weight": state["embeddings.word_embeddings.weight"],
        "position.weight": state["embeddings.position_embeddings.weight"],
        "token_type.weight": state["embeddings.token_type_embeddings.weight"],
        "norm.weight": state["embeddings.LayerNorm.weight"],
        "norm.bias": state["embeddings.LayerNorm.bias"],
    }
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in state:
        hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            out[ours + "qkv." + part] = torch.cat(
                [state[f"{hf}attention.self.{n}.{part}"] for n in ("query", "key", "value")]
            )
            out[ours + "attn_out." + part] = state[f"{hf}attention.output.dense.{part}"]
            out[ours + "attn_norm." + part] = state[f"{hf}attention.output.LayerNorm.{part}"]
            out[ours + "ff_in." + part] = state[f"{hf}intermediate.dense.{part}"]
            out[ours + "ff_out." + part] = state[f"{hf}output.dense.{part}"]
            out[ours + "ff_norm." + part] = state[f"{hf}output.LayerNorm.{part}"]
        i += 1
    return out


def pad_ids(batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a (rows, longest) id tensor padded with 0 and its boolean mask.

    NOTE: one flat tensor scattered through the mask, not a tensor per row: a GPU batch
    has a thousand rows, and ~10 us of Python each."""
    lengths = torch.tensor([len(seq) for seq in batch], dtype=torch.long)
    mask = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
    ids = torch.zeros(mask.shape, dtype=torch.long)
    ids[mask] = torch.tensor(list(itertools.chain.from_iterable(batch)), dtype=torch.long)
    return ids, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of each row's real (unmasked) token states: the sentence embedding
    all-MiniLM-L6-v2 was trained to give."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2.0, dim=1)

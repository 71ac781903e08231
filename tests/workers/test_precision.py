"""WORKER_PRECISION: what the encoder computes in, and that bf16 keeps the answers.

On this suite's CPUs bf16 may be emulated (slow), so the bf16 checks use few texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.runtime.classifier import ClassifierEngine
from workers.runtime.encoder import BASE_MODELS, Encoder, _warm_half, load_encoder
from workers.runtime.precision import AUTO_GPU_HALF_FROM_TOKENS, compute_dtype, half_from_tokens
from workers.settings import settings_from_env

from .helpers import make_request

CPU = torch.device("cpu")
DATA = Path(__file__).resolve().parents[1] / "data"


def _reviews(n: int) -> list[dict[str, str]]:
    lines = (DATA / "product_reviews.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        # A CPU stays fp32 unless told: bf16 answers move with the batch (test below).
        ("auto", torch.float32),
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),  # the operator's cost lever, however this CPU runs it
    ],
)
def test_a_cpu_computes_in_fp32_unless_told(precision: str, expected: torch.dtype) -> None:
    assert compute_dtype(precision, CPU) == expected


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        compute_dtype("fp8", CPU)
    with pytest.raises(ValueError, match="WORKER_PRECISION"):
        settings_from_env({"WORKER_PRECISION": "half"})


def test_the_setting_reads_the_environment() -> None:
    assert settings_from_env({}).precision == "auto"
    assert settings_from_env({"WORKER_PRECISION": " BF16 "}).precision == "bf16"
    assert settings_from_env({"WORKER_PRECISION": "fp32"}).precision == "fp32"


def test_the_int8_tier_ignores_the_precision() -> None:
    # Its dynamic int8 kernels take fp32 activations: autocast would only add conversions.
    int8 = load_encoder("minilm-l6-int8", device="cpu", precision="bf16")
    assert int8.dtype == torch.float32
    assert int8 is load_encoder("minilm-l6-int8", device="cpu", precision="fp32")


def test_bf16_embeddings_are_the_fp32_ones() -> None:
    texts = [row["text"] for row in _reviews(12)]
    fp32 = load_encoder("minilm-l6", device="cpu", precision="fp32")
    bf16 = load_encoder("minilm-l6", device="cpu", precision="bf16")
    assert (fp32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    assert fp32.model is not bf16.model  # two loads: the weights themselves stay fp32
    a, b = fp32.embed(texts), bf16.embed(texts)
    assert b.dtype == torch.float32  # what leaves the encoder is fp32 either way
    cosine = (a * b).sum(dim=1)
    assert cosine.min().item() >= 0.999, cosine
    # Why a CPU is fp32 unless told: a bf16 answer depends on the batch it rode in.
    alone = torch.cat([bf16.embed([text]) for text in texts[:4]])
    assert (alone - b[:4]).abs().max().item() > 1e-5
    assert (torch.cat([fp32.embed([text]) for text in texts[:4]]) - a[:4]).abs().max() < 1e-5


def test_a_bf16_worker_gives_the_same_answers() -> None:
    rows = _reviews(12)
    labels = sorted({row["label"] for row in rows})
    request = [row["text"] for row in rows]
    answers = {}
    for precision in ("fp32", "bf16"):
        engine = ClassifierEngine(settings_from_env({"WORKER_PRECISION": precision}))
        try:
            result = engine.classify(make_request(request, labels=labels))
        finally:
            engine.close()
        answers[precision] = result["results"]
    assert [r["label"] for r in answers["bf16"]] == [r["label"] for r in answers["fp32"]]
    for a, b in zip(answers["fp32"], answers["bf16"], strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=0.02)
        assert sum(b["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_auto_on_a_gpu_computes_large_passes_only_in_half_precision() -> None:
    cuda = torch.device("cuda")  # (a name: no GPU needed)
    assert half_from_tokens("auto", cuda) == AUTO_GPU_HALF_FROM_TOKENS
    assert half_from_tokens("bf16", cuda) == 0  # the operator asked for every pass
    assert half_from_tokens("auto", CPU) == half_from_tokens("bf16", CPU) == 0


def test_a_pass_below_the_switch_answers_as_fp32_and_one_above_as_bf16() -> None:
    """The rule ``auto`` follows on a GPU, run on this CPU: a forward pass smaller than
    ``half_from_tokens`` padded tokens computes in fp32 (a GPU serves small batches faster
    so), a larger one in bf16."""
    texts = [row["text"] for row in _reviews(8)]
    fp32 = load_encoder("minilm-l6", device="cpu", precision="fp32")
    bf16 = load_encoder("minilm-l6", device="cpu", precision="bf16")
    batch = [t.ids for t in fp32.tokenize(texts)]
    padded = len(batch) * max(len(ids) for ids in batch)
    switching = Encoder("minilm-l6", BASE_MODELS["minilm-l6"](), CPU, torch.bfloat16, padded)
    assert switching.numerics == f"bfloat16 from {padded} padded tokens, float32 below"

    alone = switching.embed(texts[:1])
    assert (alone - fp32.embed(texts[:1])).abs().max().item() < 1e-6
    assert (alone - bf16.embed(texts[:1])).abs().max().item() > 1e-5
    together = switching.embed_ids(batch)
    assert (together - bf16.embed_ids(batch)).abs().max().item() < 1e-6
    assert (together - fp32.embed_ids(batch)).abs().max().item() > 1e-5


def test_a_switching_encoder_warms_its_half_precision_passes_too(monkeypatch) -> None:
    """The warm-up's two short texts run in fp32 under ``auto`` on a GPU: a fresh worker's
    first bf16 passes would be its customers' (on an H200 they served 4 x 96-input clients at
    2,168 inputs/s against 5,749-6,024 once warm). Here on the CPU with a low switch."""
    monkeypatch.setattr("workers.runtime.encoder.GPU_MAX_BATCH_TOKENS", 1024)  # (a CPU's time)
    switching = Encoder("minilm-l6", BASE_MODELS["minilm-l6"](), CPU, torch.bfloat16, 256)
    passes: list[tuple[int, bool]] = []
    embed_ids = switching.embed_ids

    def recorded(batch, adapters=None):  # type: ignore[no-untyped-def]
        out = embed_ids(batch, adapters)
        padded = len(batch) * max(len(ids) for ids in batch)
        passes.append((padded, padded >= switching.half_from_tokens))
        return out

    switching.embed_ids = recorded  # type: ignore[method-assign]
    _warm_half(switching)
    # At the switch and at the GPU's batch default (workers.settings).
    assert [p for p, _ in passes] == [256, 1024] and all(half for _, half in passes)

    passes.clear()
    plain = Encoder("minilm-l6", BASE_MODELS["minilm-l6"](), CPU, torch.bfloat16, 0)
    plain.embed_ids = recorded  # type: ignore[method-assign]
    _warm_half(plain)  # every pass is bf16 already: the usual warm-up covers it
    assert passes == []

"""The cost levers, measured in one run on this machine (figures printed, never asserted):

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_economics.py

- the encoders' load times (int8: load, smooth, quantise, warm up);
- int8 / fp32 encoder throughput through the dynamic batcher, with the accuracy each gives
  on the project's own labelled sets (a logistic-regression head on frozen embeddings,
  trained and scored on the same stratified split for both), and the difference;
- bf16 autocast likewise (``WORKER_PRECISION=bf16``, the operator's choice on a CPU),
  where the CPU computes bf16 natively; elsewhere it says so and skips it (emulated bf16
  is ~14x slower);
- cost per 1,000 classifications for fp32, int8, bf16 (where measured) and cached at
  WORKER_PRICE_PER_HOUR: compute time per text x the hourly price (a cache hit uses no
  worker compute);
- cross-tenant batching: 32 concurrent one-input requests spread over 50 tenants'
  fine-tuned heads, against the same traffic to one head, through the worker's engine; and
  the same traffic spread over 50 tenants' LoRA models (adapters in the shared passes).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

from bench_model import backlog_rate, make_texts  # noqa: E402

from workers.runtime.encoder import Encoder, load_encoder  # noqa: E402
from workers.runtime.precision import cpu_has_native_bf16  # noqa: E402
from workers.settings import get_settings  # noqa: E402

DATA = ROOT / "tests" / "data"


def accuracy(encoder: Encoder, name: str) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=0.3, stratify=labels, random_state=0
    )
    head = LogisticRegression(max_iter=2000, C=10.0)
    head.fit(encoder.embed(train_x).numpy(), train_y)
    return float(head.score(encoder.embed(test_x).numpy(), test_y))


def per_thousand(texts_per_s: float, price_per_hour: Decimal) -> Decimal:
    return (Decimal(1000) / Decimal(texts_per_s)) * price_per_hour / Decimal(3600)


def fine_tuned_throughput(texts: list[str], seconds: float = 8.0) -> dict[str, float]:
    """Inputs/s at 32 threads, one input a request, through the worker's engine: to one
    tenant's head, spread over 50 tenants' heads, and spread over 50 tenants' LoRA models
    (rank 8 on query and value; their rows carry their adapters into the shared passes)."""
    import torch

    from tests.workers.helpers import make_request
    from workers.artifacts import ArtifactStore
    from workers.runtime.classifier import ClassifierEngine
    from workers.runtime.finetuned import model_file_write
    from workers.settings import settings_from_env

    os.environ.setdefault("ARTIFACT_DIR", tempfile.mkdtemp(prefix="bench-artifacts-"))
    store = ArtifactStore(os.environ["ARTIFACT_DIR"])
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    heads = [
        store.put(model_file_write(
            base_model="minilm-l6", method="head", labels=["a", "b", "c", "d"],
            head_weight=randn(4, 384), head_bias=torch.zeros(4),
        ))
        for _ in range(50)
    ]  # fmt: skip
    loras = [
        store.put(model_file_write(
            base_model="minilm-l6", method="lora", labels=["a", "b", "c", "d"],
            head_weight=randn(4, 384), head_bias=torch.zeros(4), lora_rank=8, lora_alpha=16.0,
            lora={f"{layer}.{target}.{m}": randn(*shape) * 0.02
                  for layer in range(6) for target in ("query", "value")
                  for m, shape in (("A", (8, 384)), ("B", (384, 8)))},
        ))
        for _ in range(50)
    ]  # fmt: skip
    engine = ClassifierEngine(settings_from_env())

    def run(models: list[str]) -> float:
        stop_at, done, lock = time.monotonic() + seconds, [0], threading.Lock()

        def client(n: int) -> None:
            i = n
            while time.monotonic() < stop_at:
                artifact = models[i % len(models)]
                request = make_request([texts[i % len(texts)]], model=f"ft:{artifact[:8]}",
                                       artifact=artifact)  # fmt: skip
                assert "error" not in engine.classify(request)
                with lock:
                    done[0] += 1
                i += 32

        threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return done[0] / (time.perf_counter() - began)

    for artifact in heads + loras:  # load every model once: the LRU, not a request, pays
        engine.classify(make_request(["warm"], artifact=artifact))
    rates = dict.fromkeys(["one head", "50 heads", "50 LoRA models"], 0.0)
    kinds = {"one head": heads[:1], "50 heads": heads, "50 LoRA models": loras}
    for _ in range(2):  # interleaved, best of two: drift hits every kind alike
        for name, models in kinds.items():
            rates[name] = max(rates[name], run(models))
    engine.close()
    return rates


def main() -> None:
    s = get_settings()
    began = time.perf_counter()
    fp32 = load_encoder("minilm-l6", device=s.device, threads=s.inference_torch_threads)
    fp32_load, began = time.perf_counter() - began, time.perf_counter()
    int8 = load_encoder("minilm-l6-int8", device=s.device, threads=s.inference_torch_threads)
    int8_load = time.perf_counter() - began
    print(f"encoder load (first fp32, then int8): fp32 {fp32_load:.2f} s, int8 {int8_load:.2f} s "
          "(target < 2 s)")  # fmt: skip
    ids = [t.ids for t in fp32.tokenize(make_texts(512))]
    # Interleaved, so drift on a shared machine hits both alike.
    fp32_rate, int8_rate = backlog_rate(fp32, ids), backlog_rate(int8, ids)
    fp32_rate, int8_rate = (
        max(fp32_rate, backlog_rate(fp32, ids)),
        max(int8_rate, backlog_rate(int8, ids)),
    )
    print(f"encoder fp32, dynamic batcher:      {fp32_rate:8.1f} texts/s")
    print(f"encoder int8, dynamic batcher:      {int8_rate:8.1f} texts/s")
    print(f"ratio int8 / fp32 throughput:       {int8_rate / fp32_rate:8.2f}x (target >= 2.0)")
    if s.device == "cpu":
        import torch

        from workers.runtime.int8 import _has_vnni

        # int8 pays where the CPU multiplies int8 natively (VNNI, AMX); AVX2's int8 products
        # are at best ~2x its fp32 FMAs, and measured far less on some (README).
        print(f"  this CPU: {torch.backends.cpu.get_cpu_capability()}, "
              f"{'with' if _has_vnni() else 'without'} VNNI int8 dot products")  # fmt: skip
    for name in sorted(p.name for p in DATA.glob("*.jsonl")):
        a32, a8 = accuracy(fp32, name), accuracy(int8, name)
        print(f"accuracy on {name:24s} fp32 {a32:6.1%}  int8 {a8:6.1%}  "
              f"difference {100 * (a8 - a32):+5.1f} points (target within 1)")  # fmt: skip
    bf16_rate = None
    if s.device != "cuda" and cpu_has_native_bf16():
        bf16 = load_encoder(
            "minilm-l6", device="cpu", threads=s.inference_torch_threads, precision="bf16"
        )
        bf16_rate = max(backlog_rate(bf16, ids), backlog_rate(bf16, ids))
        print(f"encoder bf16 autocast, batcher:     {bf16_rate:8.1f} texts/s "
              f"({bf16_rate / fp32_rate:.2f}x fp32)")  # fmt: skip
        for name in sorted(p.name for p in DATA.glob("*.jsonl")):
            a32, a16 = accuracy(fp32, name), accuracy(bf16, name)
            print(f"accuracy on {name:24s} fp32 {a32:6.1%}  bf16 {a16:6.1%}  "
                  f"difference {100 * (a16 - a32):+5.1f} points")  # fmt: skip
    else:
        print("encoder bf16 autocast: skipped, this CPU has no bf16 instructions (AVX512-BF16 "
              "or AMX): WORKER_PRECISION=bf16 would be emulated, ~14x slower")  # fmt: skip
    price = Decimal(s.price_per_hour)
    print(f"cost per 1,000 classifications at {price} {s.currency}/hour ({s.pool}):")
    print(f"  fp32:   {per_thousand(fp32_rate, price):.8f} {s.currency}")
    print(f"  int8:   {per_thousand(int8_rate, price):.8f} {s.currency}")
    if bf16_rate is not None:
        print(f"  bf16:   {per_thousand(bf16_rate, price):.8f} {s.currency}")
    print(f"  cached: {Decimal(0):.8f} {s.currency} (no worker compute; one Redis lookup)")
    rates = fine_tuned_throughput(make_texts(512))
    one = rates["one head"]
    print(f"one head, 32 clients:               {one:8.1f} inputs/s")
    print(f"50 tenants' heads, same traffic:    {rates['50 heads']:8.1f} inputs/s")
    print(f"ratio 50 heads / one head:          {rates['50 heads'] / one:8.2f} (target >= 0.9)")
    lora = rates["50 LoRA models"]
    print(f"50 tenants' LoRA models, same traffic: {lora:5.1f} inputs/s")
    print(f"ratio 50 LoRA models / one head:    {lora / one:8.2f}")


if __name__ == "__main__":
    main()

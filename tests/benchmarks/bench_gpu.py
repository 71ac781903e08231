"""The data plane on a CUDA GPU, measured in one run (figures printed, never asserted):

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_gpu.py [--quick]
    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_gpu.py --device cpu --quick

- the device, and the encoder's load time on it (the CUDA context first, then the load and
  warm-up that a worker's first request would otherwise pay);
- texts/s through the worker's own path (``Encoder.embed_ids`` under the ``DynamicBatcher``)
  at the worker's precision (``WORKER_PRECISION``, auto: bf16 autocast on CUDA) against the
  same weights with autocast off (fp32), at several ``max_batch_tokens`` /
  ``max_batch_size`` settings, so the GPU defaults (``workers/settings.py``) and
  ``WORKER_MAX_BATCH_TOKENS`` / ``WORKER_MAX_BATCH_SIZE`` can be chosen by measurement;
- one text per forward pass (a lone request's latency);
- bf16 against fp32: cosine of the embeddings (min/mean) to the CPU fp32 embeddings (which
  tests/workers/test_encoder.py holds equal to sentence-transformers'), a text alone against
  the same text in a padded batch (the tests assume 1e-4), and the accuracy of the project's
  head (workers/training/head.py) on tests/data/*.jsonl with each;
- fine-tuning jobs through ``train_run`` (head; LoRA for one epoch) on the device and on
  the CPU.

Without CUDA it says so and exits 0; ``--device cpu --quick`` runs every code path on a CPU
(a smoke test: both variants are fp32 there). Compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import torch  # noqa: E402
from bench_model import make_texts  # type: ignore[import-not-found]  # noqa: E402

from workers.artifacts import ArtifactStore  # noqa: E402
from workers.contract import CONTRACT_VERSION, HYPERPARAMETER_DEFAULTS, TrainRequest  # noqa: E402
from workers.runtime.batcher import DynamicBatcher  # noqa: E402
from workers.runtime.encoder import BASE_MODELS, Encoder, load_encoder  # noqa: E402
from workers.settings import settings_from_env  # noqa: E402
from workers.training import head as head_method  # noqa: E402
from workers.training.data import Rows, stratified_split  # noqa: E402
from workers.training.runner import JobContext, train_run  # noqa: E402

DATA = ROOT / "tests" / "data"
# (max_batch_tokens, max_batch_size): the shipped CPU defaults first, then GPU-sized ones.
GRID = [(2048, 64), (8192, 256), (32768, 1024), (65536, 2048)]
QUICK_GRID = [(2048, 64)]
# Texts that stress the numerics: empty, cut at 256 tokens, non-Latin, symbols.
EDGE_TEXTS = [
    "",
    "hello",
    " ".join(f"sentence number {i} keeps going about the weather and the sea." for i in range(60)),
    "Mon colis n'est jamais arrivé et personne ne répond.",
    "東京は日本の首都です。",
    "Emoji test 🚀🔥 with symbols #hashtag @mention",
    "ERROR 500: upstream connect error or disconnect/reset before headers",
    "a " * 120,
]


def numerics(encoder: Encoder) -> str:
    """What the encoder's own ``_autocast()`` turns on (for the largest pass, and from how
    many padded tokens)."""
    kind = encoder.device.type
    with encoder._autocast():
        if torch.is_autocast_enabled(kind):
            dtype = str(torch.get_autocast_dtype(kind)).removeprefix("torch.")
            if encoder.half_from_tokens:
                return f"{dtype} autocast from {encoder.half_from_tokens} padded tokens, fp32 below"
            return f"{dtype} autocast"
    return "fp32 (autocast off)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    encoder: Encoder, ids: Sequence[Sequence[int]], *, tokens: int, size: int, rounds: int
) -> tuple[float, float, float, float]:
    """All texts submitted at once (a backlog), as bench_economics.py does. Returns (best
    texts/s, texts per forward pass, share of the wall time spent inside embed_ids, peak GPU
    memory in GiB or 0)."""
    batcher = DynamicBatcher(
        encoder.embed_ids,
        max_batch_tokens=tokens,
        max_batch_size=size,
        max_wait_ms=2.0,
        name="bench",
    )
    for future in batcher.submit_many(ids[: 4 * size]):  # warm the shapes
        future.result()
    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(encoder.device)
    before, best, elapsed = batcher.stats(), 0.0, 0.0
    for _ in range(rounds):
        began = time.perf_counter()
        for future in batcher.submit_many(ids):
            future.result()
        took = time.perf_counter() - began
        elapsed += took
        best = max(best, len(ids) / took)
    after = batcher.stats()
    batcher.close()
    peak = 0.0
    if encoder.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(encoder.device) / 2**30
    per_forward = (after.texts - before.texts) / max(1, after.forwards - before.forwards)
    busy = (after.busy_ms - before.busy_ms) / 1000 / elapsed
    return best, per_forward, busy, peak


def latency_ms(encoder: Encoder, ids: Sequence[Sequence[int]]) -> float:
    """Median wall time of one text alone in a forward pass."""
    times = []
    for row in ids:
        began = time.perf_counter()
        encoder.embed_ids([row])
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def embed_all(encoder: Encoder, texts: Sequence[str]) -> torch.Tensor:
    """Length-bucketed, as fine-tuning embeds a dataset (workers/training/head.py)."""
    ids = [t.ids for t in encoder.tokenize(texts)]
    return head_method.embed_sorted(encoder, ids, lambda: None)


def batch_drift(encoder: Encoder, texts: Sequence[str]) -> float:
    """Largest |difference| of any embedding component between each text alone and the
    same text in one batch padded to the longest."""
    ids = [t.ids for t in encoder.tokenize(texts)]
    alone = torch.cat([encoder.embed_ids([row]) for row in ids])
    return float((alone - encoder.embed_ids(ids)).abs().max())


def rows_of(name: str, every: int = 1) -> Rows:
    lines = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    lines = lines[::every]
    return Rows([r["text"] for r in lines], [r["label"] for r in lines])


def head_accuracy(encoder: Encoder, rows: Rows) -> tuple[float, list[int]]:
    """The project's head, trained with its default hyperparameters on 70 % of ``rows``
    (stratified, seed 0); (accuracy on the other 30 %, the predicted label indices)."""
    train, test = stratified_split(rows, seed=0, share=0.3)
    labels = sorted(set(train.labels))
    index = {label: i for i, label in enumerate(labels)}
    y_train = torch.tensor([index[x] for x in train.labels])
    y_test = torch.tensor([index[x] for x in test.labels])
    hp = HYPERPARAMETER_DEFAULTS["head"]
    weight, bias = head_method.head_train(
        x=embed_all(encoder, train.texts),
        y=y_train,
        n_labels=len(labels),
        epochs=int(hp["epochs"]),
        learning_rate=float(hp["learning_rate"]),
        batch_size=int(hp["batch_size"]),
        seed=0,
        on_epoch=lambda *_: None,
    )
    predicted = head_method.head_predict(embed_all(encoder, test.texts), weight, bias)
    return float((predicted == y_test).float().mean()), predicted.tolist()


def train_job(device: str, method: str, rows: Rows, threads: int) -> tuple[float, float, Any]:
    """One fine-tuning job through ``train_run`` on ``device`` with a fresh artifact store
    (no cached embeddings). Returns (job seconds, seconds of the LoRA epoch or 0, metrics)."""
    data = "".join(
        json.dumps({"text": t, "label": x}) + "\n"
        for t, x in zip(rows.texts, rows.labels, strict=True)
    ).encode()
    marks: list[tuple[str, str, float]] = []

    def emit(type: str, message: str, *, level: str = "info", data: Any = None) -> None:
        marks.append((type, message, time.perf_counter()))

    hyper: dict[str, Any] = {"epochs": 1} if method == "lora" else {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        store = ArtifactStore(tmp)
        request: TrainRequest = {
            "v": CONTRACT_VERSION,
            "job_id": "ftjob_bench",
            "attempt": 1,
            "tenant_id": "ten_bench",
            "api_key_id": "key_bench",
            "livemode": False,
            "base_model": "minilm-l6",
            "method": method,  # type: ignore[typeddict-item]
            "model_id": "ft:minilm-l6:bench:x",
            "training_file": store.put(data),
            "validation_file": None,
            "hyperparameters": hyper,  # type: ignore[typeddict-item]
            "seed": 0,
        }
        began = time.perf_counter()
        result = train_run(
            JobContext(
                request,
                store,
                emit,
                lambda: False,
                device=device,
                threads=threads,
                precision=settings_from_env().precision,
            )
        )
        took = time.perf_counter() - began
    # The LoRA epoch: from the log line that starts it to its progress event.
    start = next((i for i, m in enumerate(marks) if "training LoRA" in m[1]), None)
    end = next((m[2] for m in marks[start or 0 :] if m[0] == "progress"), None)
    epoch = end - marks[start][2] if start is not None and end is not None else 0.0
    return took, epoch, result["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--texts", type=int, default=8192, help="texts per throughput round")
    parser.add_argument("--quick", action="store_true", help="a smoke test: one setting, few texts")
    parser.add_argument("--no-train", action="store_true", help="skip the fine-tuning jobs")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "CUDA is not available here: nothing to measure on a GPU. "
            "`--device cpu --quick` smoke-tests the code paths on this CPU."
        )
        return 0
    device = torch.device(args.device)
    threads = os.cpu_count() or 1
    n_texts = min(args.texts, 256) if args.quick else args.texts
    grid, rounds = (QUICK_GRID, 1) if args.quick else (GRID, 3)

    began = time.perf_counter()
    if device.type == "cuda":
        torch.zeros(1, device=device)
        sync(device)
        props = torch.cuda.get_device_properties(device)
        print(
            f"device: {props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, bf16 supported: "
            f"{torch.cuda.is_bf16_supported()}, TF32 matmul: "
            f"{torch.backends.cuda.matmul.allow_tf32}"
        )
        print(f"CUDA context:                          {time.perf_counter() - began:8.2f} s")
    else:
        print(f"device: cpu, {torch.get_num_threads()} torch threads")
    began = time.perf_counter()
    worker = load_encoder(
        "minilm-l6", device=args.device, threads=threads, precision=settings_from_env().precision
    )
    print(f"encoder load + warm-up (load_encoder):  {time.perf_counter() - began:8.2f} s")
    began = time.perf_counter()
    fp32 = Encoder("minilm-l6", BASE_MODELS["minilm-l6"](), device, torch.float32)
    sync(device)
    print(f"encoder load, weights only, again:     {time.perf_counter() - began:8.2f} s")
    fp32.embed(["warm up " * n for n in (2, 16)])
    variants = {"fp32": fp32, "worker": worker}
    print(f"the worker's encoder runs: {numerics(worker)}; the other one: {numerics(fp32)}")

    texts = make_texts(n_texts)
    began = time.perf_counter()
    tokenized = worker.tokenize(texts)
    took = time.perf_counter() - began
    ids = [t.ids for t in tokenized]
    lengths = [t.tokens for t in tokenized]
    median = int(statistics.median(lengths))
    print(
        f"texts: {len(texts)} of {min(lengths)}-{max(lengths)} tokens (median {median}); "
        f"tokenizing them: {len(texts) / took:,.0f} texts/s"
    )

    print(
        f"\nthroughput, all texts submitted at once, best of {rounds} (texts/s; texts per "
        "forward; share of wall time inside embed_ids; peak GPU memory):"
    )
    for tokens, size in grid:
        line = []
        for name, encoder in variants.items():
            rate, per_forward, busy, peak = throughput(
                encoder, ids, tokens=tokens, size=size, rounds=rounds
            )
            line.append(
                f"{name} {rate:9,.0f} ({per_forward:5.1f}/fwd, {busy:4.0%}, {peak:4.1f} GiB)"
            )
        print(f"  tokens {tokens:6d} size {size:4d}: " + "  ".join(line))

    alone = ids[: 50 if args.quick else 200]
    print(
        "\none text per forward pass, median latency: "
        + ", ".join(
            f"{name} {latency_ms(encoder, alone):.2f} ms" for name, encoder in variants.items()
        )
    )

    every = 5 if args.quick else 1
    sets = {name: rows_of(name, every) for name in sorted(p.name for p in DATA.glob("*.jsonl"))}
    sample = EDGE_TEXTS + texts[:64] + [t for rows in sets.values() for t in rows.texts]
    reference_encoder = load_encoder("minilm-l6", device="cpu", threads=threads)
    reference = embed_all(reference_encoder, sample)
    print(f"\nagreement on {len(sample)} texts (labelled sets, generated, edge cases):")
    embedded = {name: embed_all(encoder, sample) for name, encoder in variants.items()}
    for name, vectors in embedded.items():
        cosine = (vectors * reference).sum(dim=1)
        print(
            f"  {name} on {device.type} vs fp32 on cpu: cosine min {float(cosine.min()):.6f} "
            f"mean {float(cosine.mean()):.6f}"
        )
    cosine = (embedded["worker"] * embedded["fp32"]).sum(dim=1)
    print(
        f"  worker vs fp32 on {device.type}: cosine min {float(cosine.min()):.6f} "
        f"mean {float(cosine.mean()):.6f}"
    )
    drift_texts = EDGE_TEXTS + texts[:24]
    print(
        "  a text alone vs in a padded batch, max |difference|: "
        + ", ".join(
            f"{name} {batch_drift(encoder, drift_texts):.1e}" for name, encoder in variants.items()
        )
        + " (the tests allow 1e-4)"
    )

    print("\naccuracy of the head (default hyperparameters, 70/30 stratified split, seed 0):")
    for set_name, rows in sets.items():
        results = {name: head_accuracy(encoder, rows) for name, encoder in variants.items()}
        cpu_accuracy, _ = head_accuracy(reference_encoder, rows)
        same = statistics.mean(
            a == b for a, b in zip(results["fp32"][1], results["worker"][1], strict=True)
        )
        print(
            f"  {set_name:24s} fp32 {results['fp32'][0]:6.1%}  worker {results['worker'][0]:6.1%}"
            f"  (fp32 on cpu {cpu_accuracy:6.1%}); same prediction {same:6.1%}"
        )

    if args.no_train:
        return 0
    devices = [args.device] if args.quick or args.device == "cpu" else [args.device, "cpu"]
    train_rows = rows_of("product_reviews.jsonl", 4 if args.quick else 1)
    print(
        f"\nfine-tuning jobs through train_run on {len(train_rows)} product reviews "
        "(80/20 split; encoders preloaded; each job embeds anew):"
    )
    for job_device in devices:
        for base in ("minilm-l6", "minilm-l6-int8"):  # the int8 variant is measured too
            load_encoder(
                base, device=job_device, threads=threads, precision=settings_from_env().precision
            )
        for method in ("head", "lora"):
            took, epoch, metrics = train_job(job_device, method, train_rows, threads)
            lora = f", the LoRA epoch {epoch:.2f} s" if method == "lora" else ""
            int8 = metrics.get("int8_accuracy")
            print(
                f"  {job_device:4s} {method:4s}: job {took:6.2f} s{lora}; validation accuracy "
                f"{metrics['accuracy']:.4f}, its int8 variant {int8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

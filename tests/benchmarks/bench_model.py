"""Model throughput on this machine: batched through the dynamic batcher vs one text per
forward pass, and texts/s across batcher settings so the defaults in workers/settings.py
are chosen by measurement.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_model.py [--quick]

Compare figures within one run: these machines drift 20-40 % between runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workers.runtime.batcher import DynamicBatcher
from workers.runtime.encoder import Encoder, load_encoder
from workers.settings import get_settings

WORD_LIST = (
    "the a customer order account payment card invoice refund subscription plan price "
    "shipping delivery parcel package courier tracking address warehouse late delayed "
    "app website login password error crash screen button update version bug slow "
    "page upload download file export settings sync phone laptop browser network "
    "great terrible love hate happy angry disappointed excellent awful quick friendly "
    "support team agent reply email chat call week month yesterday today again still "
    "please help need want cannot could would should never always after before when "
    "because but and or not very really quite too my your our their this that it was "
    "is are have has had will get got make made work works working broken fixed new "
    "old wrong right charged twice missing extra fee discount coupon receipt product "
    "quality size colour color fit return exchange store manager staff service time"
)
WORDS = WORD_LIST.split()


def make_texts(n: int, seed: int = 7) -> list[str]:
    """``n`` deterministic 20-40-word texts of varied length."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 40))]
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def backlog_rate(
    encoder: Encoder,
    ids: Sequence[Sequence[int]],
    *,
    max_batch_size: int | None = None,
    rounds: int = 3,
) -> float:
    """Best texts/s of ``rounds`` with every text submitted at once (a backlog) to a batcher
    laid out as the worker's (settings' batch limits for the encoder's device unless
    ``max_batch_size`` is given, model threads side by side)."""
    s = get_settings()
    tokens, rows = s.batch_limits(encoder.device.type)
    batcher = DynamicBatcher(
        encoder.embed_ids,
        max_batch_tokens=tokens,
        max_batch_size=max_batch_size or rows,
        max_wait_ms=s.max_wait_ms,
        # (As the worker's engine: a GPU runs one forward at a time.)
        model_threads=s.model_threads if encoder.device.type == "cpu" else 1,
    )
    batcher.submit_many(ids[:64])[-1].result()  # warm
    best = 0.0
    for _ in range(rounds):  # best of several: the machine is shared and noisy
        began = time.perf_counter()
        for future in batcher.submit_many(ids):
            future.result()
        best = max(best, len(ids) / (time.perf_counter() - began))
    batcher.close()
    return best


def one_per_forward(encoder: Encoder, ids: Sequence[Sequence[int]]) -> float:
    began = time.perf_counter()
    for row in ids:
        encoder.embed_ids([row])
    return len(ids) / (time.perf_counter() - began)


def padded_batches(encoder: Encoder, ids: Sequence[Sequence[int]], size: int) -> float:
    """Arrival order, fixed batch size, no bucketing: each batch as ``embed_ids`` runs it
    (padded to its longest, or on a CPU packed when the padding is worth leaving out)."""
    began = time.perf_counter()
    for start in range(0, len(ids), size):
        encoder.embed_ids(ids[start : start + size])
    return len(ids) / (time.perf_counter() - began)


def through_batcher(
    encoder: Encoder,
    ids: Sequence[Sequence[int]],
    *,
    clients: int,
    max_batch_size: int,
    max_batch_tokens: int,
    max_wait_ms: float,
) -> tuple[float, float, float]:
    """``clients`` threads each send one-text requests back to back (like Celery threads).
    Returns (texts/s, median request latency ms, mean texts per forward pass)."""
    batcher = DynamicBatcher(
        encoder.embed_ids,
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = 0

    def client() -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= len(ids):
                    return
                row, next_index = ids[next_index], next_index + 1
            sent = time.perf_counter()
            batcher.submit(row).result(timeout=120)
            with lock:
                latencies.append((time.perf_counter() - sent) * 1000)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    stats = batcher.stats()
    batcher.close()
    return len(ids) / elapsed, statistics.median(latencies), stats.texts / stats.forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="fewer settings")
    args = parser.parse_args()

    settings = get_settings()
    began = time.perf_counter()
    encoder = load_encoder(
        "minilm-l6",
        device=settings.device,
        threads=settings.torch_threads,
        precision=settings.precision,
    )
    print(f"encoder load + warm-up:                {time.perf_counter() - began:8.2f} s")
    texts = make_texts(args.texts)
    tokenized = encoder.tokenize(texts)
    ids = [t.ids for t in tokenized]
    lengths = [t.tokens for t in tokenized]
    print(
        f"texts: {len(texts)}, tokens min/median/max {min(lengths)}/"
        f"{int(statistics.median(lengths))}/{max(lengths)}, device {encoder.device}, "
        f"torch threads {settings.torch_threads}"
    )
    encoder.embed_ids(ids[:32])  # warm the batch shapes

    single = one_per_forward(encoder, ids)
    padded = padded_batches(encoder, ids, 32)
    d = settings
    default_tokens, default_size = d.batch_limits(encoder.device.type)
    batched, p50, per_fwd = through_batcher(
        encoder,
        ids,
        clients=64,
        max_batch_size=default_size,
        max_batch_tokens=default_tokens,
        max_wait_ms=d.max_wait_ms,
    )
    print(f"one request per forward (batch 1):     {single:8.1f} texts/s")
    print(f"fixed batch 32, arrival order:         {padded:8.1f} texts/s")
    print(
        f"dynamic batcher, defaults, 64 clients: {batched:8.1f} texts/s "
        f"(p50 {p50:.0f} ms, {per_fwd:.1f} texts/forward)"
    )
    print(f"ratio batcher / one-per-forward:       {batched / single:8.2f}x")

    print("\nbatcher settings (64 concurrent one-text clients, wait 2 ms):")
    grid = [(8, 8192), (16, 8192), (32, 8192), (64, 8192), (128, 8192)]
    grid += [(64, 1024), (64, 2048), (64, 4096), (128, 2048)]
    if args.quick:
        grid = [(16, 8192), (64, 2048), (128, 8192)]
    for size, tokens in grid:
        rate, p50, per_fwd = through_batcher(
            encoder, ids, clients=64, max_batch_size=size, max_batch_tokens=tokens,
            max_wait_ms=2,
        )  # fmt: skip
        print(
            f"  max_batch_size={size:3d} max_batch_tokens={tokens:5d}: "
            f"{rate:7.1f} texts/s  p50 {p50:6.0f} ms  {per_fwd:5.1f} texts/forward"
        )

    print("\nwait settings at light load (96 one-text requests):")
    for clients in (1, 4, 8):
        for wait in (0, 2, 5, 10) if not args.quick else (0, 2):
            rate, p50, per_fwd = through_batcher(
                encoder, ids[:96], clients=clients, max_batch_size=default_size,
                max_batch_tokens=default_tokens, max_wait_ms=wait,
            )  # fmt: skip
            print(
                f"  clients={clients} max_wait_ms={wait:2d}: {rate:7.1f} texts/s  "
                f"p50 {p50:6.1f} ms  {per_fwd:5.1f} texts/forward"
            )


if __name__ == "__main__":
    main()

"""Where a request's CPU goes: each process of the stack ``bench_api.py`` starts (the API
server, the inference worker, the usage consumer), Redis and this load generator, in ms of
CPU (user + system, psutil) per answered request, under 32 one-input clients on the model
path. Prints figures; asserts nothing.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/bench_cpu.py [--seconds 15] [VAR=VALUE ...]

``VAR=VALUE`` arguments go to the stack's environment (``WORKER_MODEL_THREADS=1``...), for
side-by-side runs of a setting.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

from bench_api import Stack, load, wait_until_serving  # noqa: E402
from bench_model import make_texts  # noqa: E402

from deploy.embedded_redis import free_port, stop_embedded_redis  # noqa: E402
from tests.stack import stack_environment  # noqa: E402


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _redis() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if "redis-server" in (p.info["name"] or "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("env", nargs="*", help="VAR=VALUE for the stack's environment")
    args = parser.parse_args()
    extra = {"RESULT_CACHE_TTL_S": "0", **dict(item.split("=", 1) for item in args.env)}
    texts = make_texts(512)
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    env, secret, embedded = stack_environment(
        work, plan="scale", extra=extra, rate_limit_per_minute=10**8
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Stack(env, port, work)
    me = psutil.Process()
    try:
        stack.start(["api", "usage-consumer", "inference-worker"])
        wait_until_serving(url, secret)
        load(url, secret, texts, 32, 3)
        for window in range(args.windows):
            groups = {name: _tree(proc.pid) for name, proc in stack.procs.items()}
            groups |= {"redis": _redis(), "load generator": [me]}
            before = {name: _cpu(processes) for name, processes in groups.items()}
            result = load(url, secret, texts, 32, args.seconds)
            answered = result["rate"] * args.seconds
            parts = {
                name: (_cpu(processes) - before[name]) / answered * 1000
                for name, processes in groups.items()
            }
            print(
                f"window {window}: {result['rate']:.1f} inputs/s; ms of CPU a request: "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
                + f"; in all {sum(parts.values()):.2f}",
                flush=True,
            )
    finally:
        stack.stop()
        if embedded is not None:
            stop_embedded_redis(embedded)


if __name__ == "__main__":
    main()

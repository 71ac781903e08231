"""What validating an upload at the size limit costs the API process: peak memory above
the process's own (its resident set's high-water mark, in a fresh process per file) and
CPU seconds, for a CSV of short rows (the most rows a DATASET_MAX_BYTES file can hold: the
costliest case) and a JSONL file of short rows. Prints figures; asserts nothing.

    .venv/bin/python tests/benchmarks/bench_datasets.py

``BENCH_ROOT=<another worktree>`` imports that checkout's code (the code before)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parents[2]).resolve()


def upload(kind: str, limit: int) -> bytes:
    """A valid file of ``kind`` just under ``limit`` bytes, of short unique rows."""
    rows, size, i = (["text,label"], 11, 0) if kind == "csv" else ([], 0, 0)
    while size < limit - 80:
        row = (
            f"{i:x},l{i % 4}"
            if kind == "csv"
            else json.dumps({"text": f"t{i:x}", "label": f"l{i % 4}"})
        )
        rows.append(row)
        size, i = size + len(row) + 1, i + 1
    return ("\n".join(rows) + "\n").encode()


def measure(kind: str) -> None:
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("DATABASE_URL", "sqlite:////tmp/bench-datasets.sqlite3")
    import django
    from django.conf import settings

    django.setup()
    from datasets.validation import dataset_validate, normalised_jsonl

    data = upload(kind, settings.DATASET_MAX_BYTES)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.process_time()
    result = dataset_validate(data, filename=f"upload.{kind}")
    # (what is stored for a valid file; the code before built it from the rows' pairs)
    content = result.content() if hasattr(result, "content") else normalised_jsonl(result.examples)
    cpu = time.process_time() - began
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rows = result.rows if hasattr(result, "rows") else len(result.examples)
    print(f"{kind:5s} {len(data) / 2**20:5.1f} MB, {rows:>9,} rows, valid {result.valid}: "
          f"peak {peak:6.0f} MB above the process's {before / 1024:.0f} MB, "
          f"{cpu:5.1f} s of CPU (normalised content {len(content):,} bytes)")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1:
        measure(sys.argv[1])
        return
    for kind in ("csv", "jsonl"):
        subprocess.run([sys.executable, __file__, kind], check=True)


if __name__ == "__main__":
    main()

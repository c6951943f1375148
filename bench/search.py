"""Search latency over a large embeddings output: ``python -m bench.search [--rows 1000000] [--dim 384]``.

Random unit vectors (seeded) are written as Parquet parts shaped like an embeddings job's
(``doc_id``, ``row_index``, ``embedding`` as ``fixed_size_list<float32>[dim]``, ``error``), then one
query is scored against all of them by each scorer of :mod:`producer.search`, part by part, as
``batchformers search`` does (reading the parts included). Prints one JSON line per scorer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from producer.search import SCORERS, nearest


def write_parts(directory: Path, rows: int, dim: int, part_rows: int, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number, first in enumerate(range(0, rows, part_rows)):
        path = directory / f"part-{number:05d}.parquet"
        paths.append(path)
        if path.exists():
            continue
        count = min(part_rows, rows - first)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table = pa.table({
            "doc_id": pa.array([f"doc-{first + i}" for i in range(count)]),
            "row_index": pa.array(np.arange(first, first + count, dtype=np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "error": pa.nulls(count, pa.string()),
        })
        pq.write_table(table, path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-search"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    paths = write_parts(args.workdir, args.rows, args.dim, args.part_rows)
    query = np.random.default_rng(1).standard_normal(args.dim, dtype=np.float32)
    for name, scorer in SCORERS.items():
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            parts = (pq.read_table(path, columns=["doc_id", "row_index", "embedding", "error"]) for path in paths)
            hits = nearest(parts, query, ["doc_id", "row_index"], 10, None, scorer)
            seconds.append(time.perf_counter() - started)
        print(json.dumps({"method": name, "rows": args.rows, "dim": args.dim, "parts": len(paths),
                          "best_seconds": round(min(seconds), 3), "median_seconds": round(sorted(seconds)[len(seconds) // 2], 3),
                          "top": hits.column("doc_id").to_pylist()[:3]}))


if __name__ == "__main__":
    main()

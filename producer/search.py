"""Semantic search over an embeddings job: ``batchformers search OUTPUT "query" [--top-k] [--where]``.

The query is embedded with the job's own model and settings (pooling, normalisation, max
length: the manifest's spec), then every committed Parquet part is scored by cosine
similarity and only the best ``top_k`` rows are kept between parts, so memory is bounded
by one part whatever the corpus size. Rows come back best first with ``row_index``, the
job's id and pass-through columns, and ``score``.

Two scorers, measured in BENCHMARKS.md: ``duckdb`` (``array_cosine_similarity`` over the
part registered as an Arrow table; ``--where`` is any DuckDB condition on the row's
columns) and ``numpy`` (one matrix-vector product per part; a ``--where`` is applied by
DuckDB first). ``duckdb`` is the default.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import SpecError
from jobs.io.layout import OutputLayout
from jobs.pinning import pinned_spec
from jobs.shard import ROW_INDEX
from jobs.spec import JobSpec

EMBEDDING = "embedding"
SCORE = "score"
DEFAULT_TOP_K = 10
Scorer = Callable[[pa.Table, np.ndarray, int, "str | None", list[str]], pa.Table]
_runners: dict[str, Any] = {}
_lock = threading.Lock()


def search(output: str, query: str, top_k: int = DEFAULT_TOP_K, where: str | None = None,
           method: str = "duckdb") -> pa.Table:
    """The ``top_k`` rows of the embeddings job at ``output`` nearest to ``query``, best first."""
    if top_k < 1:
        raise SpecError("top_k", "must be at least 1")
    try:
        scorer = SCORERS[method]
    except KeyError:
        raise SpecError("method", f"unknown method {method!r}; valid: {', '.join(sorted(SCORERS))}") from None
    layout = OutputLayout(output)
    manifest = layout.read_manifest()
    spec = pinned_spec(manifest.job_spec(), manifest)  # the model the job ran with, not the hub's main now
    if spec.task != "embeddings" or spec.params.get("pooling") == "none":
        raise SpecError("output", f"{output} holds a {spec.task} job; search needs an embeddings job with "
                        "one vector per row (pooling other than none)")
    vector = embed_query(spec, query)
    kept = list(dict.fromkeys([*spec.kept_columns(), ROW_INDEX]))

    def parts() -> Iterator[pa.Table]:
        committed = layout.marker_numbers()[0]
        for name in [name for name, shard in layout.parts().items() if shard in committed]:  # pieces too
            with layout.storage.open(name) as handle:
                yield pq.read_table(handle, columns=[*kept, EMBEDDING, "error"])

    return nearest(parts(), vector, kept, top_k, where, scorer)


def nearest(parts: Iterable[pa.Table], vector: np.ndarray, kept: list[str], top_k: int = DEFAULT_TOP_K,
            where: str | None = None, scorer: Scorer | None = None) -> pa.Table:
    """The ``top_k`` rows of ``parts`` (tables with ``embedding`` and ``error``) nearest to ``vector``;
    one part at a time, keeping only the best rows between parts."""
    score = scorer or SCORERS["duckdb"]
    best: pa.Table | None = None
    for part in parts:
        hits = score(part, vector, top_k, where, kept)
        best = hits if best is None else _top(pa.concat_tables([best, hits]), top_k)
    if best is None:
        return pa.table({**{name: pa.array([], pa.null()) for name in kept}, SCORE: pa.array([], pa.float64())})
    return best


def embed_query(spec: JobSpec, query: str) -> np.ndarray:
    """The query's vector, by the job's own task and model (loaded once per process)."""
    options = spec.load_options()
    key = json.dumps([spec.params, options.__dict__], sort_keys=True, default=str)
    with _lock:
        runner = _runners.get(key)
        if runner is None:
            _runners.clear()
            runner = _runners[key] = spec.task_type().load(options)
    table = runner.run_table({"text": [query]}).table
    if table.column("error")[0].is_valid:
        raise SpecError("query", table.column("error")[0].as_py())
    return np.asarray(table.column(EMBEDDING)[0].values.to_numpy(zero_copy_only=False), dtype=np.float32)


def _top(table: pa.Table, top_k: int) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[(SCORE, "descending")])
    return table.take(order[:top_k])


def _duckdb(part: pa.Table, vector: np.ndarray, top_k: int, where: str | None, kept: list[str]) -> pa.Table:
    import duckdb

    connection = duckdb.connect()
    connection.register("part", part)
    dim = len(vector)
    columns = ", ".join(quoted(name) for name in kept)
    condition = f"AND ({where})" if where else ""
    sql = (f"SELECT {columns}, array_cosine_similarity({EMBEDDING}::FLOAT[{dim}], ?::FLOAT[{dim}])::DOUBLE "
           f"AS {SCORE} FROM part WHERE error IS NULL {condition} ORDER BY {SCORE} DESC LIMIT {int(top_k)}")
    try:
        return connection.sql(sql, params=[vector.tolist()]).to_arrow_table()
    except duckdb.Error as exc:
        raise SpecError("where", f"DuckDB cannot run the search: {exc}") from None


def quoted(name: str) -> str:
    """``name`` as a DuckDB identifier: column names come from a manifest, which anyone may have written."""
    return '"' + name.replace('"', '""') + '"'


def _numpy(part: pa.Table, vector: np.ndarray, top_k: int, where: str | None, kept: list[str]) -> pa.Table:
    if where:
        import duckdb

        connection = duckdb.connect()
        connection.register("part", part)
        try:
            part = connection.sql(f"SELECT * FROM part WHERE {where}").to_arrow_table()
        except duckdb.Error as exc:
            raise SpecError("where", f"DuckDB cannot run the filter: {exc}") from None
    part = part.filter(pc.is_null(part.column("error")))
    if not part.num_rows:
        return part.select(kept).append_column(SCORE, pa.array([], pa.float64()))
    vectors = part.column(EMBEDDING).combine_chunks()
    matrix = vectors.values.to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector)
    scores = (matrix @ vector) / np.where(norms == 0, 1.0, norms)
    count = min(top_k, len(scores))
    picked = np.argpartition(-scores, count - 1)[:count]
    picked = picked[np.argsort(-scores[picked], kind="stable")]
    hits = part.select(kept).take(pa.array(picked))
    return hits.append_column(SCORE, pa.array(scores[picked].astype(np.float64)))


SCORERS: dict[str, Scorer] = {
    "duckdb": _duckdb,
    "numpy": _numpy,
}

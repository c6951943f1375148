"""Model code runs only where the operator allows it: not at submit, not in `search`, whatever the job says.

The model here is a real checkpoint whose config names a Python file (``auto_map``); importing
that file writes a marker, so the tests see whether transformers ran it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jobs.errors import SpecError
from jobs.pinning import ModelChanged
from jobs.spec import load_spec
from producer.model_check import check_model
from producer.search import search
from producer.submit import prepare
from tests.models import tiny_model_path
from tests.reliability import write_rows

CODE = """import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import BertConfig


class CustomConfig(BertConfig):
    model_type = "bert"
"""


def _model_with_code(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny embeddings model whose config loads its class from ``custom.py``."""
    model = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_path("bert-embeddings"), model)
    marker = tmp_path / "model-code-ran"
    (model / "custom.py").write_text(CODE.format(marker=str(marker)))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(config))
    return model, marker


def _spec(tmp_path: Path, model: Path) -> object:
    write_rows(tmp_path / "in.parquet", 4)
    return load_spec({"task": "embeddings", "model": str(model), "input": str(tmp_path / "in.parquet"),
                      "output": str(tmp_path / "out"), "trust_remote_code": True})


def test_submit_runs_no_model_code_unless_the_operator_allows_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE", raising=False)
    model, marker = _model_with_code(tmp_path)
    spec = _spec(tmp_path, model)
    with pytest.raises(SpecError, match="BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE=1") as refused:
        check_model(spec)  # what submit checks first
    assert refused.value.field == "trust_remote_code"
    assert not marker.exists()
    monkeypatch.setenv("BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE", "1")
    check_model(spec)  # allowed: the job's request is honoured
    assert marker.exists()


def test_search_of_a_shared_output_runs_no_model_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest asking for remote code (anyone who can write the output can write one) is refused."""
    monkeypatch.delenv("BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE", raising=False)
    model, marker = _model_with_code(tmp_path)
    _, layout = prepare(_spec(tmp_path, model))  # the manifest, as a hand-made one would say it
    assert layout.read_manifest().job_spec().trust_remote_code
    with pytest.raises(SpecError, match="BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE"):
        search(layout.location, "query")
    assert not marker.exists()


def test_search_loads_the_model_the_job_was_pinned_to(tmp_path: Path) -> None:
    """Search embeds the query with the job's pinned model (a hub model at its commit, a local one
    checked against its fingerprint), not with whatever the name points at today."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path("bert-embeddings"), model)
    write_rows(tmp_path / "in.parquet", 4)
    spec = load_spec({"task": "embeddings", "model": str(model), "input": str(tmp_path / "in.parquet"),
                      "output": str(tmp_path / "out")})
    _, layout = prepare(spec)
    (model / "tokenizer_config.json").write_text("{}")  # the model changed since the job ran
    with pytest.raises(ModelChanged, match="tokenizer_config.json changed"):
        search(layout.location, "query")

"""The example jobs of the pipeline tasks are valid specs (with a tiny model standing in for the hub one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.spec import load_spec
from tests.models import tiny_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {"classification": "bert-classifier", "zero_shot": "bert-nli", "fill_mask": "bert-mlm",
        "embeddings": "bert-embeddings", "generation": "gpt2"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_jobs_are_valid(name: str) -> None:
    hub_model = load_spec(EXAMPLES / f"{name}.yaml", model=str(tiny_model_path(TINY[name])))
    assert hub_model.task == name
    assert Path(hub_model.input).exists()
    raw = (EXAMPLES / f"{name}.yaml").read_text()
    assert "model: " in raw and "/" in raw.split("model: ")[1].split()[0]  # names a real hub checkpoint

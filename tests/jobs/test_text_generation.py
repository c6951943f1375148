"""Generation parity: texts equal transformers.pipeline("text-generation"), greedy and seeded sampling,
whatever the batch size and row order."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.errors import ModelLoadError
from jobs.tasks.text_generation import ROW_INDEX, TextGenerationTask
from tests.models import tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["The market opened", "", "Zürich, Ñandú and Ωmega met São Paulo.", "a " * 60,
         "Terrible service, never again", "Hi"]
CASES: list[dict[str, Any]] = [
    {"max_new_tokens": 12, "do_sample": False},
    {"max_new_tokens": 10},
    {"max_new_tokens": 8, "top_k": 5, "temperature": 1.3, "num_return_sequences": 2, "seed": 3},
    {"max_new_tokens": 8, "top_p": 0.8, "return_full_text": False},
]


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_model_path("gpt2"))


def _texts(row: dict[str, Any]) -> list[str]:
    value = row["generated_text"]
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("params", CASES)
def test_texts_equal_the_pipeline_with_the_same_seed_per_row(model: str, params: dict[str, Any]) -> None:
    reference = pipeline("text-generation", model=model)
    runner = TextGenerationTask.from_params(params).load(LoadOptions(model=model))
    got = runner.run({"text": TEXTS}, options=RunOptions(batch_size=4))
    call = {key: value for key, value in params.items() if key != "seed"}
    for index, (text, row) in enumerate(zip(TEXTS, got, strict=True)):
        torch.manual_seed(params.get("seed", 0) + index)
        assert [out["generated_text"] for out in reference(text, **call)] == _texts(row)


def test_sampling_does_not_depend_on_batching_or_shards(model: str) -> None:
    runner = TextGenerationTask.from_params({"max_new_tokens": 8}).load(LoadOptions(model=model))
    together = runner.run({"text": TEXTS}, options=RunOptions(batch_size=6))
    alone = runner.run({"text": TEXTS}, options=RunOptions(batch_size=1))
    assert together == alone
    tail = runner.run({"text": TEXTS[3:], ROW_INDEX: [3, 4, 5]}, options=RunOptions(batch_size=2))
    assert tail == together[3:]  # a shard starting at row 3 samples rows 3.. as the whole run does
    assert len({row["generated_text"] for row in together}) == len(TEXTS)


def test_greedy_cannot_return_several_sequences(model: str) -> None:
    with pytest.raises(ModelLoadError, match="sampling"):
        TextGenerationTask.from_params({"do_sample": False, "num_return_sequences": 2}).load(LoadOptions(model=model))

"""Fill-mask parity: predictions equal transformers.pipeline("fill-mask"), several masks included."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.fill_mask import FillMaskTask
from tests.models import tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["Paris is the [MASK] of France.", "[MASK] and [MASK] went to Zürich.", "[MASK]",
         "Ωmega [MASK] São Paulo " + "word " * 100 + "[MASK]", "The [MASK] fell while the market [MASK] on Monday."]
CASES: list[dict[str, Any]] = [{}, {"top_k": 2}, {"targets": ["the", "Paris", "market"], "top_k": 5}]


@pytest.fixture(scope="module")
def model() -> str:
    return str(tiny_model_path("bert-mlm"))


@pytest.mark.parametrize("params", CASES)
def test_predictions_equal_the_pipeline(model: str, params: dict[str, Any]) -> None:
    reference = pipeline("fill-mask", model=model)
    runner = FillMaskTask.from_params(params).load(LoadOptions(model=model))
    got = runner.run({"text": TEXTS}, options=RunOptions(batch_size=2))
    for text, row in zip(TEXTS, got, strict=True):
        want = reference(text, tokenizer_kwargs={"truncation": True}, **params)
        masks = [want] if isinstance(want[0], dict) else want
        assert [len(m) for m in masks] == [len(m) for m in row["predictions"]]
        for want_mask, have_mask in zip(masks, row["predictions"], strict=True):
            for w, h in zip(want_mask, have_mask, strict=True):
                assert (w["token"], w["token_str"], w["sequence"]) == (h["token"], h["token_str"], h["sequence"])
                assert abs(w["score"] - h["score"]) < 1e-5
    assert [len(row["predictions"]) for row in got] == [1, 2, 1, 1, 2]  # the long text's last mask was cut


def test_a_text_without_a_mask_is_a_row_error(model: str) -> None:
    rows = FillMaskTask.from_params({}).load(LoadOptions(model=model)).run({"text": ["no mask", None, "a [MASK]"]})
    assert rows[0]["error"] == "No mask_token ([MASK]) found on the input"
    assert rows[1]["error"] == "text is null" and rows[2]["error"] is None

"""NER against the transformers pipeline's own post-processing, on random texts and random logits.

Hypothesis draws texts from the tiny vocabulary's words and subwords, unknown characters, punctuation
and spacing, and a model whose classifier head has random weights (so the labels, scores and their
aggregation vary far beyond what one checkpoint gives). Each batch of texts goes through our runner in
one call and through ``pipeline("token-classification")`` text by text; entities must be equal."""

from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.registry import get_task_class
from tests.models import rows_of, tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STRATEGIES = ["none", "simple", "first", "average", "max"]
HEADS = 3  # random classifier heads (seeds); 0 is the committed checkpoint itself
WORDS = ["John", "Smith", "Paris", "visited", "Apple", "Munich", "Bank", "European", "Central", "the", "of",
         "Washingtonians", "Lagarde", "Zürich", "Ñandú", "Ωmega", "São", "東京", "🙂", ",", ".", "-", "'s", "(", ")",
         "2,000", "U.S.", "xqzt", "New", "York"]
SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t"]


@cache
def model(head: int) -> str:
    if head == 0:
        return str(tiny_model_path("bert-ner"))
    import torch
    from safetensors.torch import load_file, save_file

    target = Path(tempfile.mkdtemp(prefix=f"bf-ner-head{head}-")) / "bert-ner"
    shutil.copytree(tiny_model_path("bert-ner"), target)
    weights = load_file(target / "model.safetensors")
    generator = torch.Generator().manual_seed(head)
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = torch.randn(weights[name].shape, generator=generator) * 3
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


@cache
def reference(head: int, strategy: str) -> Any:
    from transformers import pipeline

    return pipeline("token-classification", model=model(head), aggregation_strategy=strategy)


@cache
def runner(head: int, strategy: str, batch_size: int) -> Any:
    task = get_task_class("ner").from_params({"aggregation_strategy": strategy})
    return task.load(LoadOptions(model=model(head), device="cpu")).using(RunOptions(batch_size=batch_size))


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=40))
    return "".join(word + separator for word, separator in parts)


def same(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    if len(want) != len(got):
        return False
    for expected, actual in zip(want, got, strict=True):
        if {k: v for k, v in expected.items() if k != "score"} != {k: v for k, v in actual.items() if k != "score"}:
            return False
        if abs(float(expected["score"]) - float(actual["score"])) > 1e-5:
            return False
    return True


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts(), min_size=1, max_size=6), head=st.integers(0, HEADS - 1),
       strategy=st.sampled_from(STRATEGIES), batch_size=st.sampled_from([1, 4, 64]))
def test_entities_equal_the_pipeline_post_processing(batch: list[str], head: int, strategy: str,
                                                     batch_size: int) -> None:
    pipe = reference(head, strategy)
    expected = [pipe(text) if text.strip() else [] for text in batch]
    rows = rows_of(runner(head, strategy, batch_size).run({"text": batch}))
    for text, want, row in zip(batch, expected, rows, strict=True):
        assert row["error"] is None
        assert same(want, row["entities"]), (text, want, row["entities"])


def test_heads_differ() -> None:
    """The random heads do label differently, or the property above would test one model thrice."""
    text = "John Smith visited Paris and Apple in Munich."
    labels = {tuple(e["entity"] for e in reference(head, "none")(text)) for head in range(HEADS)}
    assert len(labels) == HEADS

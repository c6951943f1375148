"""A default-sized shard (10,000 rows) through one runner call, compared row by row with the reference:
the transformers pipeline for NER, the transformers 4.57 goldens for QA. Rows repeat a pool of distinct
inputs in a scrambled order, so that the reference runs once per distinct input while sorting, batching
and putting 10,000 rows back in order are exercised at full size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.registry import get_task_class
from tests.models import rows_of, tiny_model_path

SHARD_ROWS = 10_000
SCORE_TOLERANCE = 1e-5
GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "qa.json").read_text())

# Seconds each on an idle core, most of it the pipeline's own per-row post-processing: the slow tier.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def scrambled(pool_size: int, rows: int = SHARD_ROWS) -> list[int]:
    """Row -> pool index, every pool entry used, in an order unrelated to length or position."""
    step = 7919  # prime, so i * step covers every residue
    return [(i * step) % pool_size for i in range(rows)]


def ner_pool(news_texts: list[str]) -> list[str]:
    pool = list(news_texts)
    pool += [f"{a} {b}" for a, b in zip(news_texts, news_texts[5:] + news_texts[:5], strict=True)]
    pool += [text.upper() for text in news_texts[:20]] + [text.lower() for text in news_texts[20:40]]
    pool += ["", " ", "Zürich, Ñandú and Ωmega met São Paulo.", "東京で John Smith に会った。", "🙂 Angela Merkel 🙂",
             "Washingtonians", "a", "\tParis\n"]
    return pool


def same_entities(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    if len(want) != len(got):
        return False
    for expected, actual in zip(want, got, strict=True):
        if {k: v for k, v in expected.items() if k != "score"} != {k: v for k, v in actual.items() if k != "score"}:
            return False
        if abs(float(expected["score"]) - float(actual["score"])) > SCORE_TOLERANCE:
            return False
    return True


def test_ner_on_a_full_shard_equals_the_pipeline(ner_model: Path, news_texts: list[str]) -> None:
    from transformers import pipeline

    pool = ner_pool(news_texts)
    params = {"aggregation_strategy": "none"}  # the aggregations are compared on smaller inputs
    reference = pipeline("token-classification", model=str(ner_model), **params)
    expected = [reference(text) if text.strip() else [] for text in pool]
    assert sum(map(len, expected)) > len(pool)  # real entities to compare
    order = scrambled(len(pool))
    runner = get_task_class("ner").from_params(params).load(
        LoadOptions(model=str(ner_model), device="cpu")).using(RunOptions(batch_size=64, max_batch_tokens=2048))
    rows = rows_of(runner.run({"text": [pool[i] for i in order]}))
    assert len(rows) == SHARD_ROWS
    mismatched = [row for row, (index, result) in enumerate(zip(order, rows, strict=True))
                  if result["error"] is not None or not same_entities(expected[index], result["entities"])]
    assert mismatched == []


def test_qa_on_a_full_shard_equals_the_goldens() -> None:
    golden_set = next(s for s in GOLDEN["sets"] if s["name"] == "bert-top5-impossible")
    cases = golden_set["cases"]
    top_k = golden_set["params"].get("top_k", 1)
    order = scrambled(len(cases))
    runner = get_task_class("qa").from_params(golden_set["params"]).load(
        LoadOptions(model=str(tiny_model_path(golden_set["model"])), device="cpu")).using(RunOptions(batch_size=64))
    rows = rows_of(runner.run({"question": [cases[i]["question"] for i in order],
                               "context": [cases[i]["context"] for i in order]}))
    assert len(rows) == len(order)
    wrong = []
    for row_number, (index, row) in enumerate(zip(order, rows, strict=True)):
        expected = cases[index]["expected"]
        if isinstance(expected, dict):  # 4.57 raised: a row error here
            if not row["error"]:
                wrong.append(row_number)
            continue
        answers = row["answers"] if top_k > 1 else ([] if row["answer"] is None else [row])
        if row["error"] is not None or [(a["answer"], a["start"], a["end"]) for a in answers] != [
                (e["answer"], e["start"], e["end"]) for e in expected] or any(
                abs(a["score"] - e["score"]) > SCORE_TOLERANCE for a, e in zip(answers, expected, strict=True)):
            wrong.append(row_number)
    assert wrong == []

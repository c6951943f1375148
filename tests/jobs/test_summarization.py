"""Summarization parity: our summaries equal transformers 4.57's ``pipeline("summarization")``.

The expected texts in ``tests/golden/seq2seq.json`` were made by the real 4.57.6
pipeline, one text at a time (``tests/golden/make_golden_seq2seq.py``); here each
case's texts run together as one shard, unbatched and batched with padding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from jobs.engine.base import LoadOptions, Runner, RunOptions
from jobs.errors import SpecError
from jobs.tasks.seq2seq.generation import generate_config, pipeline_generation_config
from jobs.tasks.summarization import SummarizationTask
from tests.models import tiny_model_path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "seq2seq.json"
CASES = [case for case in json.loads(GOLDEN.read_text())["cases"] if case["task"] == "summarization"]
LONG_TEXT = " ".join(["The committee met again on Tuesday to discuss the budget for next year."] * 20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(params: dict[str, Any], kind: str = "bart", batch_size: int = 4) -> Runner:
    task = SummarizationTask.from_params(params)
    return task.load(LoadOptions(model=str(tiny_model_path(kind)), device="cpu")).using(RunOptions(batch_size=batch_size))


def fits_schema(params: dict[str, Any], rows: list[dict[str, Any]]) -> pa.Table:
    schema = SummarizationTask.from_params(params).output_schema()
    return pa.Table.from_pylist(rows, schema=schema.append(pa.field("error", pa.string())))


@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.slow), 5])  # one row a batch: slow tier
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_summaries_equal_the_457_pipeline(case: dict[str, Any], batch_size: int) -> None:
    runner = load(case["params"], case["model"], batch_size)
    rows = runner.run({"text": case["inputs"]})
    assert [row["error"] for row in rows] == [None] * len(rows)
    assert [row["summary_text"] for row in rows] == case["outputs"]
    assert not any(row["truncated"] for row in rows)
    fits_schema(case["params"], rows)


def test_goldens_exercise_what_they_claim() -> None:
    """Outputs differ between inputs and between settings, and T5 summaries use its prefix."""
    by_name = {case["name"]: case for case in CASES}
    defaults = by_name["bart-defaults"]["outputs"]
    assert len(set(defaults)) == len(defaults)
    assert defaults != by_name["bart-overrides"]["outputs"]
    assert all(len(set(outputs)) == 3 for outputs in by_name["bart-return-sequences"]["outputs"])
    assert by_name["t5-summarization"]["pipeline"]["prefix"] == "summarize: "


def test_long_input_is_truncated_not_fatal() -> None:
    rows = load({}).run({"text": ["Rain.", LONG_TEXT]})
    assert [row["truncated"] for row in rows] == [False, True]
    assert all(row["error"] is None and row["summary_text"] for row in rows)


def test_long_input_is_a_row_error_without_truncation() -> None:
    rows = load({"truncation": False}).run({"text": [LONG_TEXT, "Markets fell."]})
    assert "accepts at most 128" in rows[0]["error"] and rows[0]["summary_text"] is None
    assert rows[1]["error"] is None and rows[1]["summary_text"]
    fits_schema({"truncation": False}, rows)


def test_bad_rows_become_row_errors() -> None:
    texts: list[Any] = ["Markets fell.", None, 42, "", "Rain."]
    rows = load({}).run({"text": texts})
    assert [row["error"] is None for row in rows] == [True, False, False, True, True]
    assert "null" in rows[1]["error"] and "int" in rows[2]["error"]
    assert isinstance(rows[3]["summary_text"], str)  # empty text generates, as in 4.57
    fits_schema({}, rows)


def test_several_sequences_are_a_list_column() -> None:
    params = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 6}
    rows = load(params).run({"text": ["Markets fell.", None]})
    assert len(rows[0]["summary_text"]) == 2
    table = fits_schema(params, rows)
    assert table.schema.field("summary_text").type == pa.list_(pa.string())


@pytest.mark.parametrize(
    "params",
    [{"max_tokens": 5}, {"num_beams": 2, "num_return_sequences": 3}, {"min_length": -1}, {"truncation": "x"}],
)
def test_invalid_params_are_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SummarizationTask.from_params(params)


def test_more_sequences_than_the_model_beams_is_a_spec_error() -> None:
    """The model's own beam count is only known at load time."""
    with pytest.raises(SpecError, match="num_beams"):
        load({"num_return_sequences": 5})


def test_model_max_length_replaces_the_pipeline_length_default() -> None:
    """distilbart-cnn style: the model's max_length wins, its num_beams does not (4.57 ``Pipeline.__init__``)."""
    model = {"max_length": 142, "min_length": 56, "num_beams": 2, "length_penalty": 2.0}
    config, prefix = pipeline_generation_config(model, None, pad_token_id=1)
    assert (config["max_new_tokens"], config["max_length"], config["num_beams"]) == (None, 142, 4)
    assert (config["min_length"], config["length_penalty"], config["pad_token_id"], prefix) == (
        56,
        2.0,
        1,
        None,
    )


def test_task_params_apply_after_the_length_rule() -> None:
    """t5-small style: task max_length arrives too late to drop max_new_tokens, which then wins."""
    task = {"max_length": 200, "num_beams": 4, "prefix": "summarize: "}
    config, prefix = pipeline_generation_config({}, task, pad_token_id=0)
    assert (config["max_new_tokens"], config["max_length"], prefix) == (256, 200, "summarize: ")
    final = generate_config(config, {}, {"max_length": 10})
    assert final["max_length"] == 257  # max_new_tokens + the decoder start token


def test_default_max_length_gets_the_decoder_start_token() -> None:
    """A config max_length of exactly 20 counted new tokens in 4.57; a passed one did not."""
    config, _ = pipeline_generation_config({}, {"max_new_tokens": None}, pad_token_id=0)
    assert generate_config(config, {}, {"max_length": 20})["max_length"] == 20
    assert generate_config(config, {}, {})["max_length"] == 21
    assert generate_config(config, {}, {}, max_positions=16)["max_length"] == 16

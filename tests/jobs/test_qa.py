"""Question answering against transformers 4.57's pipeline (goldens from tests/golden/make_golden_qa.py)."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from jobs.engine import batching
from jobs.engine.base import LoadOptions, Runner, RunOptions
from jobs.errors import SpecError
from jobs.tasks.qa import QuestionAnsweringTask
from jobs.testing.oom import oom_above
from tests.models import tiny_model_path

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "qa.json").read_text())
SCORE_TOLERANCE = 1e-5
# Model batches of 64 chunks, and of 3 chunks / 100 padded tokens so rows of a batch split up.
BATCHINGS = {"wide": (64, None), "narrow": (3, 100)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def left_padded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert-qa whose tokenizer pads on the left, which makes 4.57 put the context first."""
    target = tmp_path_factory.mktemp("models") / "bert-qa-left"
    shutil.copytree(tiny_model_path("bert-qa"), target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "padding_side": "left"}))
    return target


@cache
def load_runner(
    model: str, params_json: str, batch_size: int = 64, max_batch_tokens: int | None = None
) -> Runner:
    task = QuestionAnsweringTask.from_params(json.loads(params_json))
    return task.load(LoadOptions(model=model, device="cpu")).using(
        RunOptions(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    )


def model_of(golden_set: dict[str, Any], left_padded_model: Path) -> str:
    if golden_set["padding_side"] == "left":
        return str(left_padded_model)
    return str(tiny_model_path(golden_set["model"]))


def answers_of(row: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    """A result row as 4.57's list of answers."""
    if top_k > 1:
        return list(row["answers"])
    return [] if row["answer"] is None else [{k: row[k] for k in ("answer", "score", "start", "end")}]


def run_golden_set(golden_set: dict[str, Any], runner: Runner) -> list[dict[str, Any]]:
    cases = golden_set["cases"]
    return runner.run({"question": [c["question"] for c in cases], "context": [c["context"] for c in cases]})


def assert_matches_golden(golden_set: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Same answers, starts and ends as 4.57, scores within float noise; errors where 4.57 raised."""
    top_k = golden_set["params"].get("top_k", 1)
    assert len(rows) == len(golden_set["cases"])
    for case, row in zip(golden_set["cases"], rows, strict=True):
        label = f"{case['question'][:30]!r} / {case['context'][:30]!r}"
        expected = case["expected"]
        if isinstance(expected, dict):
            assert row["error"], f"{label}: 4.57 raised {expected['error']}"
            continue
        assert row["error"] is None, label
        actual = answers_of(row, top_k)
        assert [(a["answer"], a["start"], a["end"]) for a in actual] == [
            (e["answer"], e["start"], e["end"]) for e in expected
        ], label
        for a, e in zip(actual, expected, strict=True):
            assert a["score"] == pytest.approx(e["score"], abs=SCORE_TOLERANCE), label


@pytest.mark.parametrize("batching", BATCHINGS.values(), ids=BATCHINGS.keys())
@pytest.mark.parametrize("golden_set", GOLDEN["sets"], ids=[s["name"] for s in GOLDEN["sets"]])
def test_matches_transformers_457(
    golden_set: dict[str, Any], batching: tuple, left_padded_model: Path
) -> None:
    """All cases of a parameter set run as one shard, so sorting and batching mix them."""
    runner = load_runner(model_of(golden_set, left_padded_model), json.dumps(golden_set["params"]), *batching)
    assert_matches_golden(golden_set, run_golden_set(golden_set, runner))


def test_out_of_memory_splits_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches that run out of memory are split down to single chunks with the same answers;
    a chunk that does not fit alone makes its row an error."""
    golden_set = next(s for s in GOLDEN["sets"] if s["name"] == "bert-small-chunks-top3")
    runner = load_runner(str(tiny_model_path("bert-qa")), json.dumps(golden_set["params"]))
    monkeypatch.setattr(batching, "batch_probe", oom_above(1))
    assert_matches_golden(golden_set, run_golden_set(golden_set, runner))
    monkeypatch.setattr(batching, "batch_probe", oom_above(0))
    rows = run_golden_set(golden_set, runner)
    answerable = [not isinstance(case["expected"], dict) for case in golden_set["cases"]]
    assert ["out of memory" in row["error"] for row in rows] == answerable


def test_left_padding_fixture_is_left(left_padded_model: Path) -> None:
    runner: Any = load_runner(str(left_padded_model), "{}")
    assert runner.tokenizer.padding_side == "left"
    assert not runner.settings.question_first


@pytest.mark.parametrize("kind", ["bert-qa", "distilbert-qa"])
def test_bad_rows_become_errors(kind: str) -> None:
    runner = load_runner(str(tiny_model_path(kind)), '{"top_k": 2}')
    good = ("Where is the bank?", "The bank is in Frankfurt, near the river.")
    questions = [good[0], None, "", 5, good[0], good[0], good[0]]
    contexts = [good[1], good[1], good[1], good[1], None, "", ["a list"]]
    progress: list[int] = []
    rows = runner.run({"question": questions, "context": contexts}, progress.append)
    assert [row["error"] for row in rows] == [
        None,
        "question is null",
        "question cannot be empty",
        "question must be a string, got int",
        "context is null",
        "context cannot be empty",
        "context must be a string, got list",
    ]
    assert rows[0]["answers"] == runner.run({"question": [good[0]], "context": [good[1]]})[0]["answers"]
    assert all(row["answers"] is None for row in rows[1:])
    assert sum(progress) == len(questions)


def test_too_long_question_is_a_row_error() -> None:
    runner = load_runner(str(tiny_model_path("bert-qa")), '{"max_seq_len": 48, "doc_stride": 8}')
    long_question = " ".join(["the"] * 38) + "?"  # 39 tokens: 48 - 39 - 3 special leaves 6 <= doc_stride
    context = "The bank is in Frankfurt. " * 10
    rows = runner.run(
        {"question": [long_question, "Where?", long_question], "context": [context, context, "Yes."]}
    )
    assert rows[0]["error"].startswith("question is too long (39 tokens)")
    assert rows[1]["error"] is None and rows[1]["answer"]
    assert rows[2]["error"] is None  # fits without truncation, as in 4.57


@pytest.mark.parametrize(
    "params",
    [
        {"topk": 2},
        {"top_k": 0},
        {"max_answer_len": 0},
        {"doc_stride": -1},
        {"max_seq_len": 0},
        {"max_seq_len": 32, "doc_stride": 40},
        {"align_to_words": "sometimes"},
    ],
)
def test_invalid_params_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        QuestionAnsweringTask.from_params(params)


def test_default_stride_checked_against_model_length() -> None:
    """doc_stride 200 only fails once max_seq_len defaults to bert-qa's 128."""
    task = QuestionAnsweringTask.from_params({"doc_stride": 200})
    with pytest.raises(SpecError, match="doc_stride"):
        task.load(LoadOptions(model=str(tiny_model_path("bert-qa")), device="cpu"))


@pytest.mark.parametrize("top_k", [1, 3])
def test_rows_match_output_schema(top_k: int) -> None:
    task = QuestionAnsweringTask.from_params({"top_k": top_k})
    runner = load_runner(str(tiny_model_path("distilbert-qa")), json.dumps({"top_k": top_k}))
    rows = runner.run({"question": ["Who?", None, "Who?"], "context": ["Anna met Bob in Paris.", "x", "   "]})
    schema = task.output_schema().append(pa.field("error", pa.string()))
    table = pa.Table.from_pylist(rows, schema=schema)
    assert table.num_rows == 3
    assert table.schema.names == (["answer", "score", "start", "end"] if top_k == 1 else ["answers"]) + [
        "error"
    ]
    assert table.column("error").null_count == 2

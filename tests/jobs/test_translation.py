"""Translation parity: our translations equal transformers 4.57's ``pipeline("translation...")``.

Covers T5 (task prefix from ``task_specific_params``), Marian (sentencepiece, pad
as decoder start) and an NLLB-style multilingual model (language tokens and
``forced_bos_token_id``). Expected texts come from the real 4.57.6 pipeline, one
text at a time (``tests/golden/make_golden_seq2seq.py``).
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
from jobs.tasks.translation import TranslationParams, TranslationTask, task_key
from tests.models import tiny_model_path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "seq2seq.json"
CASES = [case for case in json.loads(GOLDEN.read_text())["cases"] if case["task"] == "translation"]
LONG_TEXT = " ".join(["The committee met again on Tuesday to discuss the budget for next year."] * 20)
NLLB = {"src_lang": "eng_Latn", "tgt_lang": "deu_Latn"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(params: dict[str, Any], kind: str, batch_size: int = 4) -> Runner:
    task = TranslationTask.from_params(params)
    return task.load(LoadOptions(model=str(tiny_model_path(kind)), device="cpu")).using(RunOptions(batch_size=batch_size))


def fits_schema(params: dict[str, Any], rows: list[dict[str, Any]]) -> pa.Table:
    schema = TranslationTask.from_params(params).output_schema()
    return pa.Table.from_pylist(rows, schema=schema.append(pa.field("error", pa.string())))


@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.slow), 4])  # one row a batch: slow tier
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_translations_equal_the_457_pipeline(case: dict[str, Any], batch_size: int) -> None:
    runner = load(case["params"], case["model"], batch_size)
    rows = runner.run({"text": case["inputs"]})
    assert [row["error"] for row in rows] == [None] * len(rows)
    assert [row["translation_text"] for row in rows] == case["outputs"]
    fits_schema(case["params"], rows)


def test_goldens_exercise_what_they_claim() -> None:
    by_name = {case["name"]: case for case in CASES}
    assert by_name["t5-translation-en-de"]["pipeline"]["prefix"] == "translate English to German: "
    assert by_name["t5-translation-default-key"]["pipeline"]["prefix"] == "translate English to German: "
    assert by_name["nllb-eng-deu"]["outputs"] != by_name["nllb-fra-spa"]["outputs"][:1]
    for case in CASES:
        assert len({json.dumps(output) for output in case["outputs"]}) > 1, case["name"]


@pytest.mark.parametrize(("kind", "params"), [("marian", {}), ("multilingual", NLLB), ("t5", {})])
def test_long_input_is_truncated_not_fatal(kind: str, params: dict[str, Any]) -> None:
    rows = load(params, kind).run({"text": [LONG_TEXT, "Rain."]})
    assert [row["truncated"] for row in rows] == [True, False]
    assert all(row["error"] is None for row in rows)


def test_bad_rows_become_row_errors() -> None:
    texts: list[Any] = [None, "Markets fell.", ["a list"], ""]
    rows = load(NLLB, "multilingual").run({"text": texts})
    assert [row["error"] is None for row in rows] == [False, True, False, True]
    fits_schema(NLLB, rows)


def test_multilingual_model_needs_both_languages() -> None:
    with pytest.raises(ValidationError, match="tgt_lang"):
        TranslationTask.from_params({"src_lang": "eng_Latn"})
    with pytest.raises(SpecError, match="multilingual"):
        load({}, "multilingual")


@pytest.mark.parametrize(
    "params", [{"src_lang": "eng_Latn", "tgt_lang": "xx_Latn"}, {"src_lang": "zz", "tgt_lang": "deu_Latn"}]
)
def test_unknown_language_codes_are_spec_errors(params: dict[str, str]) -> None:
    with pytest.raises(SpecError, match="language code"):
        load(params, "multilingual")


@pytest.mark.parametrize("params", [{"source": "en"}, {"src_lang": ""}, {"num_beams": 0}])
def test_invalid_params_are_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TranslationTask.from_params(params)


def test_default_model_is_opus_mt_for_plain_codes() -> None:
    assert (
        TranslationTask.default_model_for({"src_lang": "en", "tgt_lang": "de"})
        == "Helsinki-NLP/opus-mt-en-de"
    )
    assert TranslationTask.default_model_for(NLLB) is None
    assert TranslationTask.default_model_for({"num_beams": 2}) is None


def test_task_key_follows_the_457_task_names() -> None:
    specific = {"summarization": {}, "translation_en_to_fr": {}, "translation_en_to_de": {}}
    assert task_key(TranslationParams(src_lang="en", tgt_lang="de"), specific) == "translation_en_to_de"
    assert task_key(TranslationParams(), specific) == "translation_en_to_fr"  # first translation_* key
    assert task_key(TranslationParams(**NLLB), specific) == "translation_en_to_fr"
    assert task_key(TranslationParams(), None) == "translation"

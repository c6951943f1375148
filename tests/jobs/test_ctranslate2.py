"""``engine: ctranslate2``: parity with 4.57 measured per golden case, the conversion cache, the
settings mapping, the spec rules, and jobs through real workers converting at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.engine.base import LoadOptions, Runner, RunOptions
from jobs.errors import SpecError
from jobs.settings import Settings
from jobs.spec import load_spec
from jobs.tasks.seq2seq.ctranslate2 import cache as ct2
from jobs.tasks.seq2seq.ctranslate2 import options as ct2_options
from jobs.tasks.seq2seq.ctranslate2.options import ctranslate2_options
from jobs.tasks.seq2seq.generation import GLOBAL_DEFAULTS
from jobs.tasks.summarization import SummarizationTask
from jobs.tasks.translation import TranslationTask
from tests.models import tiny_model_path

pytest.importorskip("ctranslate2")

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "seq2seq.json"
CASES = json.loads(GOLDEN.read_text())["cases"]
TASKS = {"summarization": (SummarizationTask, "summary_text"), "translation": (TranslationTask, "translation_text")}

IDENTICAL = {
    "bart-defaults": 1,
    "bart-overrides": 4,
    "bart-greedy": 10,
    "bart-return-sequences": 0,
    "t5-summarization": 6,
    "t5-summarization-short": 4,
    "t5-translation-en-de": 10,
    "t5-translation-default-key": 3,
    "marian-defaults": 10,
    "marian-beams": 1,
    "nllb-eng-deu": 9,
    "nllb-fra-spa": 5,
}
"""Outputs identical to transformers 4.57.6 per golden case, float32 on a CPU, measured (README,
"engine: ctranslate2"). Every case below its total uses beam search with ``no_repeat_ngram_size``
(CTranslate2 bans the n-grams before the softmax, 4.57 after it, so beams rank differently), but
nllb-eng-deu, whose one different row is 4.57's ``early_stopping: false`` search going on past
``num_beams`` finished hypotheses."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One conversion cache for the module's tests (conversions of the tiny models are reused)."""
    path = tmp_path_factory.getbasetemp() / "ct2-cache"
    monkeypatch.setenv("BATCHFORMERS_CACHE_DIR", str(path))
    return path


def load(task: str, params: dict[str, Any], kind: str, dtype: str = "auto", batch_size: int = 4) -> Runner:
    cls, _ = TASKS[task]
    options = LoadOptions(model=str(tiny_model_path(kind)), device="cpu", dtype=dtype, engine="ctranslate2")
    return cls.from_params(params).load(options).using(RunOptions(batch_size=batch_size))


# -- parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_share_identical_to_457_is_the_measured_one(case: dict[str, Any]) -> None:
    _, column = TASKS[case["task"]]
    rows = load(case["task"], case["params"], case["model"]).run({"text": case["inputs"]})
    assert [row["error"] for row in rows] == [None] * len(rows)
    same = sum(row[column] == want for row, want in zip(rows, case["outputs"], strict=True))
    assert same >= IDENTICAL[case["name"]], f"{case['name']}: {same}/{len(rows)} identical"
    if case["params"].get("num_beams") == 1:
        assert same == len(rows), "greedy search must give 4.57's outputs"


def test_every_golden_case_is_measured() -> None:
    assert set(IDENTICAL) == {case["name"] for case in CASES}


def test_int8_runs_and_keeps_rows_in_order() -> None:
    case = next(case for case in CASES if case["name"] == "marian-defaults")
    rows = load("translation", {}, "marian", dtype="int8").run({"text": [None, *case["inputs"]]})
    assert rows[0]["error"] is not None and all(row["error"] is None for row in rows[1:])
    assert all(isinstance(row["translation_text"], str) for row in rows[1:])


def test_overlap_on_and_off_give_the_same_table() -> None:
    case = next(case for case in CASES if case["name"] == "nllb-eng-deu")
    runner = load("translation", case["params"], "multilingual")
    inputs = {"text": case["inputs"] * 3}
    on = runner.run_table(inputs, options=RunOptions(batch_size=3, overlap=True)).table
    off = runner.run_table(inputs, options=RunOptions(batch_size=3, overlap=False)).table
    assert on.equals(off)


def test_rows_without_content_run_on_transformers_as_in_457() -> None:
    """CTranslate2 returns nothing for a source of special tokens only; 4.57 generated from them."""
    case = next(case for case in CASES if case["name"] == "bart-greedy")
    empty = case["inputs"].index("")
    rows = load("summarization", case["params"], "bart").run({"text": ["", "Rain."]})
    assert rows[0]["summary_text"] == case["outputs"][empty] != ""


def test_threads_follow_the_worker_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctranslate2

    seen: dict[str, Any] = {}
    real = ctranslate2.Translator

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ctranslate2, "Translator", spy)
    monkeypatch.setenv("BATCHFORMERS_TORCH_THREADS", "3")
    load("translation", {}, "marian")
    assert seen["intra_threads"] == 3 and seen["compute_type"] == "float32"


# -- the conversion cache ----------------------------------------------------------------


def _fake_convert(output: str, log: str) -> None:
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.3)
    os.makedirs(output)
    Path(output, "model.bin").write_bytes(os.urandom(4096))
    Path(output, "config.json").write_text("{}")


def _convert_in_process(root: str, log: str, queue: Any) -> None:
    key = ct2.ConversionKey("some/model", "abc", "float32", "test")
    queue.put(str(ct2.converted(key, Path(root), lambda out: _fake_convert(out, log))))


def test_eight_processes_starting_together_convert_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    log = tmp_path / "conversions.log"
    processes = [context.Process(target=_convert_in_process, args=(str(tmp_path / "cache"), str(log), queue))
                 for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * 8
    directories = {queue.get(timeout=5) for _ in processes}
    assert len(log.read_text().splitlines()) == 1
    assert len(directories) == 1
    entries = [p for p in (tmp_path / "cache" / "ctranslate2").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in entries] == [Path(directories.pop()).name]  # no temporary directory left


def test_a_truncated_conversion_is_detected_and_redone(tmp_path: Path) -> None:
    key = ct2.ConversionKey("some/model", "abc", "float32", "test")
    log = tmp_path / "conversions.log"
    directory = ct2.converted(key, tmp_path, lambda out: _fake_convert(out, str(log)))
    assert ct2.is_complete(directory, key)
    assert ct2.converted(key, tmp_path, lambda out: _fake_convert(out, str(log))) == directory
    assert len(log.read_text().splitlines()) == 1

    model = directory / "model.bin"
    model.write_bytes(model.read_bytes()[:100])  # truncated, as by a full disk or a killed copy
    assert not ct2.is_complete(directory, key)
    assert ct2.converted(key, tmp_path, lambda out: _fake_convert(out, str(log))) == directory
    assert len(log.read_text().splitlines()) == 2
    assert ct2.is_complete(directory, key) and model.stat().st_size == 4096


def test_a_conversion_without_its_manifest_is_redone(tmp_path: Path) -> None:
    key = ct2.ConversionKey("some/model", "abc", "float32", "test")
    directory = key.directory(tmp_path)
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(b"partial")
    log = tmp_path / "conversions.log"
    ct2.converted(key, tmp_path, lambda out: _fake_convert(out, str(log)))
    assert ct2.is_complete(directory, key) and (directory / "model.bin").stat().st_size == 4096


def test_one_entry_per_compute_type_and_a_changed_local_model_converts_again(cache_dir: Path) -> None:
    load("translation", {}, "marian")
    load("translation", {}, "marian", dtype="int8")
    names = sorted(p.name for p in (cache_dir / "ctranslate2").glob("*marian*") if p.is_dir())
    assert any("float32" in name for name in names) and any("int8" in name for name in names)
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(tiny_model_path("marian")))
    first = ct2.conversion_key(str(tiny_model_path("marian")), config, None, "float32")
    hub = ct2.conversion_key("Helsinki-NLP/opus-mt-en-de", type("C", (), {"_commit_hash": "f00d"})(), "main", "int8")
    assert first.revision.startswith("local:") and hub.revision == "f00d"


def test_default_cache_dir_is_under_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BATCHFORMERS_CACHE_DIR")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert Settings().resolved_cache_dir() == tmp_path / "hf" / "batchformers"


# -- settings and spec -----------------------------------------------------------------------


class _Tokenizer:
    eos_token_id = 2

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        return [f"t{i}" for i in ids] if isinstance(ids, list) else f"t{ids}"


def _resolved(**settings: Any) -> dict[str, Any]:
    return {**GLOBAL_DEFAULTS, "max_length": 20, "eos_token_id": 2, **settings}


def test_lengths_count_as_457_counted_them() -> None:
    options, prefix = ctranslate2_options(_resolved(max_length=24, min_length=6), _Tokenizer())
    assert (options["max_decoding_length"], options["min_decoding_length"], prefix) == (23, 5, None)
    options, prefix = ctranslate2_options(_resolved(max_length=24, forced_eos_token_id=2, forced_bos_token_id=7),
                                          _Tokenizer())
    assert (options["max_decoding_length"], prefix) == (22, ["t7"])  # forced end token, decoder start token


def test_beam_settings_map_one_to_one() -> None:
    options, _ = ctranslate2_options(_resolved(num_beams=5, num_return_sequences=3, length_penalty=2.0,
                                               no_repeat_ngram_size=3, bad_words_ids=[[9]]), _Tokenizer())
    assert (options["beam_size"], options["num_hypotheses"], options["length_penalty"]) == (5, 3, 2.0)
    assert options["no_repeat_ngram_size"] == 3 and options["suppress_sequences"] == [["t9"]]
    assert options["max_input_length"] == 0 and options["return_end_token"] is True


@pytest.mark.parametrize(("setting", "value"), [("do_sample", True), ("num_beam_groups", 2),
                                                ("encoder_no_repeat_ngram_size", 2), ("early_stopping", "never"),
                                                ("forced_decoder_ids", [[1, 5]])])
def test_a_setting_ctranslate2_cannot_express_is_a_spec_error_naming_it(setting: str, value: Any) -> None:
    with pytest.raises(SpecError) as raised:
        ctranslate2_options(_resolved(**{setting: value}), _Tokenizer())
    assert raised.value.field == f"params.{setting}"


def _spec(**fields: Any) -> dict[str, Any]:
    return {"task": "translation", "model": "m", "input": "in.parquet", "output": "out", **fields}


def test_engine_is_checked_at_submit_time(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match="does not run task ner") as raised:
        load_spec(_spec(task="ner", engine="ctranslate2"))
    assert raised.value.field == "engine"
    with pytest.raises(SpecError, match="int8 needs engine: ctranslate2"):
        load_spec(_spec(dtype="int8"))
    with pytest.raises(SpecError, match="early_stopping"):
        load_spec(_spec(engine="ctranslate2", params={"early_stopping": "never"}))
    spec = load_spec(_spec(engine="ctranslate2", dtype="int8"))
    assert (spec.load_options().engine, spec.load_options().dtype) == ("ctranslate2", "int8")
    assert load_spec(_spec()).fingerprint() != spec.fingerprint()

    monkeypatch.setattr(ct2_options.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"pip install 'batchformers\[ctranslate2\]'"):
        load_spec(_spec(engine="ctranslate2"))


def test_default_engine_keeps_the_fingerprint_of_older_specs() -> None:
    spec = load_spec(_spec())
    from jobs.spec import NOT_FINGERPRINTED

    payload = spec.model_dump(mode="json", exclude=NOT_FINGERPRINTED | {"engine"})
    import hashlib

    assert spec.fingerprint() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# -- through real workers ---------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_through_two_workers_converting_at_once(tmp_path: Path, news_texts: list[str], settings: Settings,
                                                      start_workers: Any) -> None:
    """Two workers start on a summarization and a translation job with an empty cache: each model
    is converted exactly once, and the Parquet output equals the runner's own."""
    from producer.submit import submit
    from producer.watch import wait

    cache = tmp_path / "worker-cache"
    texts = [*news_texts[:15], None]
    table = pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    jobs = [("summarization", "bart", {"num_beams": 2}), ("translation", "marian", {})]
    specs = [load_spec({"task": task, "model": str(tiny_model_path(kind)), "input": str(source),
                        "output": str(tmp_path / f"out-{task}"), "columns": {"id": "doc_id"}, "params": params,
                        "shard_rows": 4, "batch_size": 4, "engine": "ctranslate2", "device": "cpu"})
             for task, kind, params in jobs]
    start_workers(2, BATCHFORMERS_CACHE_DIR=str(cache))
    submissions = [submit(spec, settings) for spec in specs]
    for spec, submission in zip(specs, submissions, strict=True):
        status = wait(submission.output, timeout=300)
        assert status.state == "complete", status
        output = ds.dataset(submission.output, format="parquet").to_table().sort_by("row_index")
        assert output.column("doc_id").to_pylist() == table.column("doc_id").to_pylist()
        direct = spec.task_type().load(spec.load_options()).run({"text": texts})
        column = TASKS[spec.task][1]
        assert output.column(column).to_pylist() == [row[column] for row in direct]
        assert output.column("error").to_pylist()[-1] is not None
    entries = [p for p in (cache / "ctranslate2").iterdir() if p.is_dir()]
    assert sorted(p.name.split("-models-")[-1].split("-")[0] for p in entries) == ["bart", "marian"]
    assert all(not p.name.startswith(".") for p in entries)
    logs = "".join(p.read_text() for p in tmp_path.glob("logs-*/*") if p.is_file())
    assert logs.count("to CTranslate2 float32") == 2, "each model converted once, by one worker"

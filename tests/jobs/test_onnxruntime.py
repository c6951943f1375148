"""``engine: onnxruntime``: float32 parity with the transformers engine on every encoder case, the QA goldens
of transformers 4.57, int8's measured agreement, and the submit-time refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.engine.base import SERVED_BY
from jobs.errors import SpecError
from jobs.spec import load_spec
from jobs.tasks.registry import TASKS, get_task_class
from tests.onnx_parity import CASES, GOLDEN_QA, Case, agreement, run_case

pytest.importorskip("onnxruntime")

FAST = {"ner simple", "ner max stride 8", "qa bert-small-chunks-top3", "classification top 1", "zero_shot multi_label",
        "fill_mask top 5", "embeddings tiny, model's pooling"}  # the fast tier's share; `make test` runs every case
FLOAT_GAP = 1e-4
INT8_CASES = {"qa bert-defaults": (0.9, 0.2), "ner simple": (0.4, 0.3), "classification top 1": (0.6, 0.5),
              "embeddings all-MiniLM-L6-v2": (1.0, 0.1)}
"""int8's floor of identical rows and ceiling of the score gap per case, with room below what was measured
(BENCHMARKS.md). The tiny random models are quantization's worst case: their few, large weights."""


pytestmark = pytest.mark.usefixtures("one_torch_thread", "onnx_cache")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One conversion cache for the module: each tiny model exports once per head and dtype."""
    path = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHFORMERS_CACHE_DIR", str(path))
        yield path


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.name, marks=() if case.name in FAST else pytest.mark.slow)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_float32_gives_the_transformers_engines_rows(case: Case) -> None:
    """Labels, spans, answers, tokens identical; every score and vector within 1e-4."""
    want = run_case(case, "transformers")
    got = run_case(case, "onnxruntime")
    assert sum(row["error"] is None for row in want) > len(want) // 2  # the comparison is about results
    measured = agreement(got, want)
    assert measured.identical == measured.rows, [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert measured.largest_score_gap <= FLOAT_GAP


@pytest.mark.parametrize("golden_set", [pytest.param(s, id=s["name"], marks=() if s["name"] == "bert-defaults"
                                                     else pytest.mark.slow)
                                        for s in GOLDEN_QA["sets"] if s["padding_side"] == "right"])
def test_qa_on_onnxruntime_matches_transformers_457(golden_set: dict[str, Any]) -> None:
    from tests.jobs.test_qa import assert_matches_golden

    case = next(c for c in CASES if c.name == f"qa {golden_set['name']}")
    assert_matches_golden(golden_set, run_case(case, "onnxruntime"))


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow if "MiniLM" in name else ())
                                  for name in sorted(INT8_CASES)])
def test_int8_runs_and_agrees_as_measured(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    want = run_case(case, "transformers")
    got = run_case(case, "onnxruntime", "int8")
    assert [row["error"] for row in got] == [row["error"] for row in want]
    measured = agreement(got, want)
    share, gap = INT8_CASES[name]
    assert measured.share >= share
    assert 0 < measured.largest_score_gap <= gap  # quantized: scores move, within the measured bound
    if case.task == "embeddings":  # the directions hardly move: what retrieval reads
        import numpy as np

        pairs = [(np.array(g["embedding"]), np.array(w["embedding"])) for g, w in zip(got, want, strict=True)
                 if w["embedding"] is not None and np.any(w["embedding"])]
        assert min(float(g @ w / np.linalg.norm(g) / np.linalg.norm(w)) for g, w in pairs) > 0.96  # measured 0.976


def test_int8_is_its_own_cache_entry_beside_float32(onnx_cache: Path) -> None:
    case = next(c for c in CASES if c.name == "ner simple")
    run_case(case, "onnxruntime")
    run_case(case, "onnxruntime", "int8")
    entries = sorted(p.name for p in (onnx_cache / "onnxruntime").iterdir() if p.is_dir() and "bert-ner" in p.name)
    assert [name.split("-")[-2] for name in entries] == ["float32", "int8"]
    sizes = [(onnx_cache / "onnxruntime" / name / "model.onnx").stat().st_size for name in entries]
    assert sizes[1] < sizes[0]  # int8 weights (the tiny model is mostly its float embedding table)


# -- submit-time checks ---------------------------------------------------------------------------


def _spec(**fields: Any) -> dict[str, Any]:
    return {"task": "ner", "model": "m", "input": "in.parquet", "output": "out", "engine": "onnxruntime", **fields}


@pytest.mark.parametrize("task", ["tokenize", "summarization", "translation", "generation"])
def test_a_task_the_engine_does_not_serve_is_refused_naming_those_it_serves(task: str) -> None:
    params = {"src_lang": "en", "tgt_lang": "de"} if task == "translation" else {}
    with pytest.raises(SpecError, match="does not run task") as raised:
        load_spec(_spec(task=task, params=params))
    assert raised.value.field == "engine"
    assert "ner, qa, classification, zero_shot, fill_mask, embeddings" in raised.value.message


def test_the_served_tasks_are_those_whose_engines_name_it() -> None:
    for engine, served in SERVED_BY.items():
        assert sorted(served) == sorted(name for name in TASKS if engine in get_task_class(name).engines)


def test_dtype_and_package_are_checked_at_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_spec(_spec(dtype="int8")).load_options().dtype == "int8"
    with pytest.raises(SpecError, match="runs dtype auto, float32, int8, not float16") as raised:
        load_spec(_spec(dtype="float16"))
    assert raised.value.field == "dtype"
    with pytest.raises(SpecError, match="int8 needs engine: onnxruntime"):
        load_spec(_spec(engine="transformers", dtype="int8"))

    from jobs.engine.onnxruntime import support

    monkeypatch.setattr(support.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"pip install 'batchformers\[onnx\]'"):
        load_spec(_spec())


def test_an_architecture_the_exporter_cannot_handle_is_refused_at_submit(tmp_path: Path, ner_model: Path) -> None:
    """FNet's Fourier layers have no ONNX export; the refusal names the supported architectures."""
    from producer.model_check import check_model

    model = tmp_path / "fnet"
    model.mkdir()
    config = json.loads((ner_model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "fnet",
                                                   "architectures": ["FNetForTokenClassification"]}))
    spec = load_spec(_spec(model=str(model), allow_untrained_head=True))
    with pytest.raises(SpecError, match="cannot export model type 'fnet'; supported: albert, bert") as raised:
        check_model(spec)
    assert raised.value.field == "model"
    assert check_model(load_spec(_spec(model=str(ner_model)))) is not None  # a BERT passes


def test_a_gpu_job_without_onnxruntime_gpu_fails_to_load_saying_what_to_install() -> None:
    import torch

    from jobs.engine.onnxruntime.model import CUDA, providers_for
    from jobs.errors import ModelLoadError

    available = pytest.importorskip("onnxruntime").get_available_providers()
    if CUDA in available:
        pytest.skip("this machine has onnxruntime-gpu")
    with pytest.raises(ModelLoadError, match=r"batchformers\[onnx-gpu\]"):
        providers_for(torch.device("cuda:0"), "float32")
    with pytest.raises(ModelLoadError, match="int8 runs on the CPU only"):
        providers_for(torch.device("cuda:0"), "int8")
    assert providers_for(torch.device("cuda:0"), "float32", explicit=False) == (["CPUExecutionProvider"], "cpu")

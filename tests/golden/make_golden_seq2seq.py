"""Write ``tests/golden/seq2seq.json``: what transformers 4.57's pipelines generate for the tiny models.

Run with the reference environment (transformers==4.57.6), not the project's:

    /work/main/.venv-457/bin/python tests/golden/make_golden_seq2seq.py

It imports nothing from batchformers (which needs transformers 5). Every case is
a job's ``params`` and texts; the script turns the params into the pipeline call
a 4.57 user would have made (``pipeline("translation_en_to_de", ...)`` when both
languages are plain codes, else ``pipeline("translation", src_lang=..., tgt_lang=...)``;
generation settings as call keyword arguments) and runs every text on its own,
as the pipeline does with its default ``batch_size=1``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
NEWS = ROOT / "jobs" / "testing" / "data" / "news_sentences.txt"
OUTPUT = Path(__file__).with_name("seq2seq.json")
LANGUAGE_PARAMS = ("src_lang", "tgt_lang")


def news(count: int, start: int = 0) -> list[str]:
    lines = [line.strip() for line in NEWS.read_text().splitlines() if line.strip()]
    return lines[start : start + count]


def long_text() -> str:
    """Two news sentences joined: 87 to 101 tokens, long but within the tiny models' 128."""
    return " ".join(news(2, start=20))


def mixed_inputs() -> list[str]:
    """Very short and long inputs together, so batches pad short rows heavily.

    News line 13 is left out: for T5 it makes a near-tie between two beams that
    5.x's SDPA attention (4.57's T5 used eager) resolves the other way.
    """
    return [
        news(1)[0],
        "Rain.",
        long_text(),
        "",
        news(1, 7)[0],
        "Markets fell.",
        news(1, 24)[0],
        news(1, 12)[0],
        *news(2, 14),
    ]


CASES: list[dict[str, Any]] = [
    {
        "name": "bart-defaults",
        "task": "summarization",
        "model": "bart",
        "params": {},
        "inputs": mixed_inputs(),
    },
    {
        "name": "bart-overrides",
        "task": "summarization",
        "model": "bart",
        "params": {
            "min_length": 3,
            "max_length": 14,
            "no_repeat_ngram_size": 2,
            "num_beams": 2,
            "length_penalty": 1.0,
        },
        "inputs": mixed_inputs(),
    },
    {
        "name": "bart-greedy",
        "task": "summarization",
        "model": "bart",
        "params": {"num_beams": 1, "early_stopping": False, "min_length": 0, "no_repeat_ngram_size": 0},
        "inputs": mixed_inputs(),
    },
    {
        "name": "bart-return-sequences",
        "task": "summarization",
        "model": "bart",
        "params": {"num_beams": 5, "num_return_sequences": 3, "max_new_tokens": 10},
        "inputs": news(4, 30),
    },
    {
        "name": "t5-summarization",
        "task": "summarization",
        "model": "t5",
        "params": {},
        "inputs": mixed_inputs(),
    },
    {
        "name": "t5-summarization-short",
        "task": "summarization",
        "model": "t5",
        "params": {"max_new_tokens": 12, "min_length": 4, "num_beams": 3},
        "inputs": news(5, 40),
    },
    {
        "name": "t5-translation-en-de",
        "task": "translation",
        "model": "t5",
        "params": {"src_lang": "en", "tgt_lang": "de"},
        "inputs": mixed_inputs(),
    },
    {
        "name": "t5-translation-default-key",
        "task": "translation",
        "model": "t5",
        "params": {"max_length": 10, "num_return_sequences": 2},
        "inputs": news(3, 50),
    },
    {
        "name": "marian-defaults",
        "task": "translation",
        "model": "marian",
        "params": {},
        "inputs": mixed_inputs(),
    },
    {
        "name": "marian-beams",
        "task": "translation",
        "model": "marian",
        "params": {
            "src_lang": "en",
            "tgt_lang": "de",
            "num_beams": 3,
            "num_return_sequences": 2,
            "no_repeat_ngram_size": 2,
            "early_stopping": True,
        },
        "inputs": news(5, 55),
    },
    {
        "name": "nllb-eng-deu",
        "task": "translation",
        "model": "multilingual",
        "params": {"src_lang": "eng_Latn", "tgt_lang": "deu_Latn"},
        "inputs": mixed_inputs(),
    },
    {
        "name": "nllb-fra-spa",
        "task": "translation",
        "model": "multilingual",
        "params": {
            "src_lang": "fra_Latn",
            "tgt_lang": "spa_Latn",
            "num_beams": 2,
            "min_length": 6,
            "length_penalty": 0.5,
        },
        "inputs": news(5, 60),
    },
]


def pipeline_call(case: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The 4.57 ``pipeline`` task name, its init kwargs and its call kwargs for a case's params."""
    params = dict(case["params"])
    languages = {key: params.pop(key) for key in LANGUAGE_PARAMS if key in params}
    task = case["task"]
    init: dict[str, Any] = {}
    if task == "translation" and len(languages) == 2:
        src, tgt = languages["src_lang"], languages["tgt_lang"]
        if "_" in src or "_" in tgt:
            init.update(languages)  # "translation_eng_Latn_to_..." is not a valid 4.57 task name
        else:
            task = f"translation_{src}_to_{tgt}"
    return task, init, params


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    from transformers import pipeline

    task, init, call = pipeline_call(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline(task, model=str(MODELS / case["model"]), device="cpu", **init)
        key = "summary_text" if case["task"] == "summarization" else "translation_text"
        outputs = []
        for text in case["inputs"]:
            generated = [record[key] for record in pipe(text, **call)]
            outputs.append(generated if call.get("num_return_sequences", 1) > 1 else generated[0])
    return {
        **case,
        "pipeline": {"task": task, "init": init, "call": call, "prefix": pipe.prefix},
        "outputs": outputs,
    }


def main() -> None:
    import transformers

    if not transformers.__version__.startswith("4.57"):
        sys.exit(f"run with transformers 4.57 (found {transformers.__version__})")
    golden = {"transformers": transformers.__version__, "cases": [run_case(case) for case in CASES]}
    OUTPUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(golden['cases'])} cases to {OUTPUT}")


if __name__ == "__main__":
    main()

"""Write ``tests/golden/qa.json``: what transformers 4.57's question-answering pipeline answers.

Run with the reference environment (transformers==4.57.6), not the project's:

    /work/main/.venv-457/bin/python tests/golden/make_golden_qa.py

It imports nothing from batchformers (which needs transformers 5). Each parameter
set names a committed tiny model and a job's ``params``; every (question, context)
pair is answered by its own pipeline call, as a 4.57 user would with the default
``batch_size=1``. Answers are stored as a list (4.57 returns a bare dict for one);
a pair 4.57 raises for is stored as ``{"error": ...}``. Sets with ``padding_side``
``left`` use a copy of the model whose tokenizer pads on the left, which makes
4.57 put the context first. The tokenizer prints a Rust panic message for the
too-long questions that 4.57 fails on; those cases are stored as errors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
NEWS = ROOT / "jobs" / "testing" / "data" / "news_sentences.txt"
OUTPUT = Path(__file__).with_name("qa.json")


def news(count: int, start: int = 0) -> list[str]:
    lines = [line.strip() for line in NEWS.read_text().splitlines() if line.strip()]
    return lines[start : start + count]


def paragraph(count: int, start: int = 0) -> str:
    return " ".join(news(count, start))


def pairs() -> list[tuple[str, str]]:
    """Short and very long contexts mixed, with the edge cases of word alignment and merging."""
    first, second = news(2)
    return [
        ("Who is the President of the European Central Bank?", first),
        ("Where will Apple open a research centre?", second),
        ("What caused flooding across northern Italy?", paragraph(10)),  # a few chunks at 128 tokens
        ("Which city hosted the meeting?", paragraph(40, 5)),  # many chunks
        ("Where?", "Paris."),
        ("What?", "x"),
        (
            "Who visited Kraków?",
            "Zoë Müller-Lüdenscheidt visited Kraków and 東京 on 12 März; naïve café owners ☃ cheered.",
        ),
        ("What launched?", "The 🚀 launched from Cape Canaveral at 10:42 — a record ✓ for SpaceX™ (again)."),
        (
            "Which city is repeated?",
            "Berlin berlin BERLIN Berlin. The capital is Berlin, and berlin is big. BERLIN!",
        ),
        (
            "Which long word?",
            "Supercalifragilisticexpialidocious antidisestablishmentarianism internationalization.",
        ),
        (" ", news(1, 3)[0]),
        ("Who?", "   "),
        ("Line?", "Line one.\n\nLine\ttwo  with   spaces,\u00a0and a non-breaking one."),
        ("What is [CLS] doing here?", "The token [CLS] appears in the text, as does [SEP] and [UNK]."),
        (
            "Why did the committee, after a long and heated debate that lasted several days and "
            "nights, decide to postpone the vote on the new budget proposal until next spring?",
            "Budget.",
        ),
        ("What repeats across chunks?", " ".join([news(1, 9)[0]] * 12)),
        ("", first),
        ("Who?", ""),
    ]


def long_question() -> tuple[str, str]:
    """39 question tokens: with max_seq_len 48 and doc_stride 8 no chunk has room (4.57 raises)."""
    return (" ".join(["Which"] * 38) + "?", paragraph(3))


SETS: list[dict[str, Any]] = [
    {"name": "bert-defaults", "model": "bert-qa", "params": {}},
    {
        "name": "bert-small-chunks-top3",
        "model": "bert-qa",
        "params": {"top_k": 3, "max_seq_len": 48, "doc_stride": 8},
    },
    {
        "name": "bert-top5-impossible",
        "model": "bert-qa",
        "params": {"top_k": 5, "handle_impossible_answer": True, "max_answer_len": 4},
    },
    {
        "name": "bert-no-align-top3",
        "model": "bert-qa",
        "params": {
            "top_k": 3,
            "align_to_words": False,
            "max_answer_len": 30,
            "max_seq_len": 48,
            "doc_stride": 20,
        },
    },
    {
        "name": "bert-no-align-top1-impossible",
        "model": "bert-qa",
        "params": {
            "align_to_words": False,
            "handle_impossible_answer": True,
            "max_seq_len": 40,
            "doc_stride": 6,
        },
    },
    {
        "name": "bert-answer-len-1",
        "model": "bert-qa",
        "params": {"top_k": 2, "max_answer_len": 1, "doc_stride": 0},
    },
    {"name": "distilbert-defaults", "model": "distilbert-qa", "params": {}},
    {
        "name": "distilbert-top5-chunks-impossible",
        "model": "distilbert-qa",
        "params": {"top_k": 5, "max_seq_len": 48, "doc_stride": 16, "handle_impossible_answer": True},
    },
    {
        "name": "bert-left-padding-top3",
        "model": "bert-qa",
        "padding_side": "left",
        "params": {"top_k": 3, "max_seq_len": 40, "doc_stride": 10},
    },
]


def model_dir(name: str, padding_side: str, scratch: Path) -> Path:
    """The committed model, or a copy whose tokenizer pads on ``padding_side``."""
    source = MODELS / name
    if padding_side == "right":
        return source
    target = scratch / f"{name}-{padding_side}"
    if not target.exists():
        shutil.copytree(source, target)
        config_path = target / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["padding_side"] = padding_side
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return target


def answer(qa: Any, question: str, context: str, params: dict[str, Any]) -> Any:
    """4.57's answers as a list, or the error it raised."""
    try:
        output = qa(question=question, context=context, **params)
    except BaseException as exc:  # the tokenizer panics (a BaseException) on some too-long questions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"error": f"{type(exc).__name__}: {exc}"}
    answers = output if isinstance(output, list) else [output]
    return [
        {"answer": a["answer"], "score": float(a["score"]), "start": int(a["start"]), "end": int(a["end"])}
        for a in answers
    ]


def main() -> None:
    import transformers
    from transformers import pipeline

    warnings.filterwarnings("ignore")
    os.environ.setdefault("RUST_BACKTRACE", "0")  # the expected panics need no backtrace
    transformers.logging.set_verbosity_error()
    sets = []
    with tempfile.TemporaryDirectory() as scratch:
        for spec in SETS:
            padding_side = spec.get("padding_side", "right")
            qa = pipeline(
                "question-answering", model=str(model_dir(spec["model"], padding_side, Path(scratch)))
            )
            assert qa.tokenizer.padding_side == padding_side
            cases = [*pairs(), long_question()]
            sets.append(
                {
                    **spec,
                    "padding_side": padding_side,
                    "cases": [
                        {"question": q, "context": c, "expected": answer(qa, q, c, spec["params"])}
                        for q, c in cases
                    ],
                }
            )
            print(f"{spec['name']}: {len(cases)} cases")
    golden = {"transformers": transformers.__version__, "sets": sets}
    OUTPUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()

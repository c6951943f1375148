"""Every documented parameter of every task changes the output: a runner that ignored it would fail here.

Each case runs the same rows twice through ``TaskType.load(...).run``: with a base setting and with one
parameter changed, and the outputs must differ. Correctness (equal to the pipeline / 4.57 goldens) is
checked by each task's own tests; this file only proves that no parameter is dropped on the way. The
list of parameters is checked against the README's table and each task's params model, so a parameter
added without a case here fails too.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from jobs.engine.base import LoadOptions, Runner, RunOptions
from jobs.engine.batching import observe_batches
from jobs.tasks.registry import TASKS, get_task_class
from tests.models import close, rows_of, tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
README = Path(__file__).resolve().parents[2] / "README.md"
NEWS = [line for line in (Path(__file__).resolve().parents[2] / "jobs" / "testing" / "data" / "news_sentences.txt")
        .read_text().splitlines() if line.strip()]
LONG = " ".join(NEWS[:8])  # hundreds of tokens: many chunks for the tiny models' 64-128 positions
TEXTS = NEWS[:5] + [LONG, "", "Zürich, Ñandú and Ωmega met São Paulo."]
QA_CONTEXT = " ".join(NEWS[:6])
QA = {"question": ["Who is the President of the European Central Bank?", "Where will Apple open a research centre?",
                   "What caused flooding across northern Italy?"], "context": [QA_CONTEXT, NEWS[1], QA_CONTEXT]}
NLLB = {"src_lang": "eng_Latn", "tgt_lang": "deu_Latn"}
# The tiny seq2seq models never choose end-of-sequence on their own, so min_length and early_stopping
# could not change anything; "+eosN" is a copy whose end-of-sequence logit is raised by N.
GENERATION = [  # (param, value, base params, model suffix): beam-only settings are compared with beams
    ("max_length", 6, {}, ""),
    ("min_length", 12, {"num_beams": 1, "min_length": 0}, "+eos30"),
    ("max_new_tokens", 3, {}, ""),
    ("num_beams", 2, {"num_beams": 1}, ""),
    ("length_penalty", -5.0, {"num_beams": 4, "max_length": 30}, ""),
    ("no_repeat_ngram_size", 1, {}, ""),
    ("early_stopping", True, {"num_beams": 4, "early_stopping": "never", "max_length": 60}, "+eos30"),
    ("num_return_sequences", 2, {"num_beams": 2}, ""),
    ("truncation", False, {}, ""),  # the over-long row fails instead of being cut
]
SEQ2SEQ = {"text": [line for line in NEWS[:5]] + [LONG]}
MARIAN_SUFFIX = {"early_stopping": "+eos6"}  # raised by 30, every beam ends at once
MARIAN_INPUTS = {"num_beams": {"text": next(c for c in json.loads(
    (Path(__file__).parents[1] / "golden" / "seq2seq.json").read_text())["cases"] if c["name"] == "marian-defaults")[
    "inputs"]}}
QA_GOLDEN = next(s for s in json.loads((Path(__file__).parents[1] / "golden" / "qa.json").read_text())["sets"]
                 if s["name"] == "bert-top5-impossible")["cases"]
QA_IMPOSSIBLE = {"question": [c["question"] for c in QA_GOLDEN], "context": [c["context"] for c in QA_GOLDEN]}
EOS_IDS = {"bart": 2, "marian": 0}
ZERO_SHOT = {"candidate_labels": ["politics", "sports"]}
MASKED = {"text": ["The [MASK] rose on Monday.", "Prices [MASK] and [MASK] fell.", "[MASK]"]}
GREEDY = {"max_new_tokens": 4, "do_sample": False, "temperature": 5.0}  # the tiny GPT-2 is peaked: sample hot
SAMPLING = {"max_new_tokens": 4, "do_sample": True, "seed": 3, "temperature": 5.0}
# (task, model, base params, parameter, changed value, inputs)
CASES: list[Any] = [
    ("tokenize", "bert-ner", {}, "add_special_tokens", False, {"text": TEXTS}),
    ("tokenize", "bert-ner", {"max_length": 8}, "truncation", True, {"text": TEXTS}),
    ("tokenize", "bert-ner", {"truncation": True}, "max_length", 8, {"text": TEXTS}),
    ("ner", "bert-ner", {}, "aggregation_strategy", "simple", {"text": TEXTS}),
    ("ner", "bert-ner", {"aggregation_strategy": "simple"}, "aggregation_strategy", "max", {"text": TEXTS}),
    ("ner", "bert-ner", {}, "ignore_labels", ["I-LOC"], {"text": TEXTS}),  # the tiny model never says "O"
    ("ner", "bert-ner", {"aggregation_strategy": "simple"}, "stride", 8, {"text": TEXTS}),
    ("qa", "bert-qa", {}, "top_k", 3, QA),
    ("qa", "bert-qa", {"max_seq_len": 64, "top_k": 3}, "doc_stride", 10, QA),
    ("qa", "bert-qa", {"top_k": 3}, "max_seq_len", 64, QA),
    ("qa", "bert-qa", {"top_k": 3}, "max_answer_len", 1, QA),
    ("qa", "bert-qa", {"top_k": 5, "max_answer_len": 4}, "handle_impossible_answer", True, QA_IMPOSSIBLE),
    ("qa", "bert-qa", {"top_k": 3}, "align_to_words", False, QA),
    *[("summarization", f"bart{suffix}", base, name, value, SEQ2SEQ) for name, value, base, suffix in GENERATION],
    *[("translation", f"marian{MARIAN_SUFFIX.get(name, suffix)}", base, name, value, MARIAN_INPUTS.get(name, SEQ2SEQ))
      for name, value, base, suffix in GENERATION],
    ("translation", "multilingual", NLLB, "src_lang", "fra_Latn", {"text": TEXTS[:4]}),
    ("translation", "multilingual", NLLB, "tgt_lang", "spa_Latn", {"text": TEXTS[:4]}),
    ("classification", "bert-classifier", {"top_k": 1}, "top_k", None, {"text": TEXTS}),
    ("classification", "bert-classifier", {}, "function_to_apply", "sigmoid", {"text": TEXTS}),
    ("zero_shot", "bert-nli", ZERO_SHOT, "candidate_labels", ["weather", "sports", "money"], {"text": TEXTS[:4]}),
    ("zero_shot", "bert-nli", ZERO_SHOT, "hypothesis_template", "Was it {}?", {"text": TEXTS[:4]}),
    ("zero_shot", "bert-nli", ZERO_SHOT, "multi_label", True, {"text": TEXTS[:4]}),
    ("fill_mask", "bert-mlm", {}, "top_k", 2, MASKED),
    ("fill_mask", "bert-mlm", {}, "targets", ["the", "and"], MASKED),
    ("embeddings", "bert-embeddings", {}, "pooling", "cls", {"text": TEXTS}),
    ("embeddings", "bert-embeddings", {"normalize": True}, "normalize", False, {"text": TEXTS}),
    ("embeddings", "bert-embeddings", {}, "max_length", 4, {"text": TEXTS}),
    ("generation", "gpt2", GREEDY, "max_new_tokens", 6, {"text": TEXTS[:4]}),
    ("generation", "gpt2", GREEDY, "do_sample", True, {"text": TEXTS[:4]}),
    ("generation", "gpt2", SAMPLING, "seed", 7, {"text": TEXTS[:4]}),
    ("generation", "gpt2", SAMPLING, "temperature", 0.5, {"text": TEXTS[:4]}),
    ("generation", "gpt2", SAMPLING, "top_k", 1, {"text": TEXTS[:4]}),
    ("generation", "gpt2", SAMPLING, "top_p", 0.01, {"text": TEXTS[:4]}),
    ("generation", "gpt2", SAMPLING, "num_return_sequences", 2, {"text": TEXTS[:4]}),
    ("generation", "gpt2", GREEDY, "return_full_text", False, {"text": TEXTS[:4]}),
]


@cache
def model_path(kind: str) -> str:
    """A fixture model, or ``KIND+eosN``: a temporary copy whose end-of-sequence logit is raised by N."""
    base, _, eos = kind.partition("+eos")
    if not eos:
        return str(tiny_model_path(base))
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    target = Path(tempfile.mkdtemp(prefix="bf-eos-")) / base
    shutil.copytree(tiny_model_path(base), target)
    weights = load_file(target / "model.safetensors")
    weights["final_logits_bias"][0, EOS_IDS[base]] += float(eos)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


@cache
def runner_for(task: str, kind: str, params_json: str, dtype: str = "auto", batch_size: int = 4,
               max_batch_tokens: int | None = None) -> Runner:
    options = LoadOptions(model=model_path(kind), device="cpu", dtype=dtype)
    task_type = get_task_class(task).from_params(json.loads(params_json))
    task_type.bind_model(options)
    runner = task_type.load(options)
    return runner.using(RunOptions(batch_size=batch_size, max_batch_tokens=max_batch_tokens))


def run(task: str, kind: str, params: dict[str, Any], inputs: dict[str, list[Any]], **options: Any) -> list[Any]:
    rows = rows_of(runner_for(task, kind, json.dumps(params, sort_keys=True), **options).run(inputs))
    assert len(rows) == len(next(iter(inputs.values())))
    return rows


@pytest.mark.parametrize(("task", "kind", "base", "name", "value", "inputs"), CASES,
                         ids=[case.id if hasattr(case, "id") else f"{case[0]}-{case[1]}-{case[3]}={case[4]}"
                              for case in CASES])
def test_parameter_changes_the_output(task: str, kind: str, base: dict[str, Any], name: str, value: Any,
                                      inputs: dict[str, list[Any]]) -> None:
    assert base.get(name) != value
    before = run(task, kind, base, inputs)
    after = run(task, kind, {**base, name: value}, inputs)
    assert after != before, f"{task}: {name}={value!r} made no difference to the output"


def documented_params() -> dict[str, set[str]]:
    """Task -> its params, from the README's task table."""
    found: dict[str, set[str]] = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| `(\w+)`(?: \([^|]*\))? \| [^|]+ \| ([^|]+) \|", line)
        if match and match.group(1) in TASKS:
            found[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2))) - {"null"}
    return found


def test_every_documented_parameter_has_a_case() -> None:
    documented = documented_params()
    assert set(documented) == set(TASKS)
    generation = {name for name, *_ in GENERATION}
    documented["translation"] = (documented["translation"] | generation)  # "the generation params"
    tested: dict[str, set[str]] = {}
    for case in CASES:
        task, _, _, name, _, _ = case.values if hasattr(case, "values") else case
        tested.setdefault(task, set()).add(name)
    for task in TASKS:
        declared = set(get_task_class(task).Params.model_fields)
        assert documented[task] <= tested[task], (task, documented[task] - tested[task])
        assert declared <= tested[task] | {"prefix"}, (task, declared - tested[task])


# -- the spec's batch settings -------------------------------------------------------------------


def batches_seen(task: str, kind: str, params: dict[str, Any], inputs: dict[str, list[Any]],
                 **options: Any) -> list[tuple[int, int]]:
    from jobs.engine import batching

    seen: list[tuple[int, int]] = []

    def observer(rows: int, real: int, padded: int, seconds: float) -> None:
        seen.append((rows, padded))

    observe_batches(observer)
    try:
        run(task, kind, params, inputs, **options)
    finally:
        batching._observers.remove(observer)
    return seen


@pytest.mark.parametrize(("task", "kind", "inputs"), [
    ("ner", "bert-ner", {"text": TEXTS * 3}),
    ("qa", "bert-qa", QA),
    ("summarization", "bart", SEQ2SEQ),
])
def test_batch_size_and_max_batch_tokens_are_held(task: str, kind: str, inputs: dict[str, list[Any]]) -> None:
    wide = batches_seen(task, kind, {}, inputs, batch_size=64)
    assert max(rows for rows, _ in wide) > 3
    narrow = batches_seen(task, kind, {}, inputs, batch_size=3)
    assert narrow and max(rows for rows, _ in narrow) <= 3
    budget = 100
    bounded = batches_seen(task, kind, {}, inputs, batch_size=64, max_batch_tokens=budget)
    assert bounded and all(padded <= budget or rows == 1 for rows, padded in bounded)
    assert max(padded for _, padded in wide) > budget  # the budget did bind
    # Outputs do not depend on how rows were batched.
    assert close(run(task, kind, {}, inputs, batch_size=3), run(task, kind, {}, inputs, batch_size=64))


def test_dtype_auto_is_float32_on_cpu() -> None:
    """auto means fp32 on a CPU: the same output as float32, another one than bfloat16."""
    inputs = {"text": TEXTS}
    auto = run("ner", "bert-ner", {"ignore_labels": []}, inputs, dtype="auto")
    assert auto == run("ner", "bert-ner", {"ignore_labels": []}, inputs, dtype="float32")
    assert auto != run("ner", "bert-ner", {"ignore_labels": []}, inputs, dtype="bfloat16")

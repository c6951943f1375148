"""The vectorised NER post-processing equals the pipeline's own, fed the very same logits.

Random logits (some sharpened, so that entities form groups of every size), texts with
subwords, unknown characters, accents and stride windows; every aggregation strategy and
several ``ignore_labels``. Scores must be equal, not close: both sides compute float32 softmax
and means the same way.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import pytest
from transformers import AutoModelForTokenClassification, AutoTokenizer, TokenClassificationPipeline
from transformers.pipelines.token_classification import AggregationStrategy

from jobs.engine.contract import Item
from jobs.tasks.ner_decode import EntityDecoder
from tests.models import tiny_model_path

STRATEGIES = ["none", "simple", "first", "average", "max"]
IGNORED = [["O"], [], ["O", "PER", "B-PER"]]


# WordPiece (subwords known by their "##" prefix) and byte-level BPE (no such prefix: the pipeline then
# takes a token that follows no space for a subword); only post-processing runs, so any tokenizer does.
# Only the word strategies look at subwords, so the BPE tokenizer runs those.
CASES = [("bert-ner", strategy, stride) for strategy in STRATEGIES for stride in (None, 4)
         if not (stride and strategy == "none")]  # stride needs aggregation (as in transformers)
CASES += [("gpt2", strategy, None) for strategy in ("first", "average", "max")]


@pytest.fixture(scope="module")
def pipeline_parts(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path(getattr(request, "param", "bert-ner"))))
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_model_path("bert-ner")))
    return tokenizer, TokenClassificationPipeline(model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def texts(news_texts: list[str]) -> list[str]:
    rng = random.Random(7)
    words = " ".join(news_texts).split() + ["Zürich", "Ñandú", "Ωmega", "日本", "São", "e\u0301te\u0301", "##x", "--"]
    made = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(60)]
    return news_texts[:20] + made + ["", "   ", " ".join(news_texts[:5])]


def _logits(rng: np.random.Generator, tokens: int, labels: int) -> np.ndarray:
    logits = rng.normal(size=(tokens, labels)).astype(np.float32)
    sharp = rng.random(tokens) < 0.6
    logits[sharp, rng.integers(0, labels, sharp.sum())] += 6.0  # confident tokens: long groups
    return logits


@pytest.mark.parametrize(("pipeline_parts", "strategy", "stride"), CASES, indirect=["pipeline_parts"])
def test_entities_equal_the_pipeline_postprocess(pipeline_parts: tuple[Any, Any], texts: list[str], strategy: str,
                                                 stride: int | None) -> None:
    tokenizer, reference = pipeline_parts
    _assert_equal_to_the_pipeline(tokenizer, reference, texts, strategy, stride, IGNORED)


# Entity types with a hyphen (WNUT's "creative-work"), types that differ only in their first letter,
# labels without a B-/I- prefix, and a tokenizer whose backend has no decoder (words joined by spaces).
OTHER_LABELS = ["O", "B-creative-work", "I-creative-work", "B-AX", "I-AX", "B-BX", "I-BX", "MISC", "Y"]


@pytest.fixture(scope="module")
def other_labels_parts() -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path("bert-ner")))
    tokenizer.backend_tokenizer.decoder = None
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_model_path("bert-ner")))
    model.config.id2label = dict(enumerate(OTHER_LABELS))  # only post-processing runs: the head's size is moot
    model.config.label2id = {label: i for i, label in enumerate(OTHER_LABELS)}
    return tokenizer, TokenClassificationPipeline(model=model, tokenizer=tokenizer, device="cpu")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_other_label_schemes_and_a_tokenizer_without_a_decoder(other_labels_parts: tuple[Any, Any], texts: list[str],
                                                              strategy: str) -> None:
    tokenizer, reference = other_labels_parts
    _assert_equal_to_the_pipeline(tokenizer, reference, texts, strategy, None,
                                  [["O"], ["O", "creative-work", "I-AX", "Y"]])


def _assert_equal_to_the_pipeline(tokenizer: Any, reference: Any, texts: list[str], strategy: str,
                                  stride: int | None, ignored: list[list[str]]) -> None:
    rng = np.random.default_rng(11)
    kwargs: dict[str, Any] = {"truncation": True, "return_offsets_mapping": True, "return_special_tokens_mask": True}
    if stride:
        kwargs.update(return_overflowing_tokens=True, stride=stride)
    encoded = tokenizer(texts, **kwargs)
    owners = encoded.get("overflow_to_sample_mapping") or list(range(len(texts)))
    labels = len(reference.model.config.id2label)
    chunks: dict[int, list[tuple[Any, np.ndarray]]] = {}
    for index, owner in enumerate(owners):
        chunks.setdefault(owner, []).append((encoded.encodings[index], _logits(rng, len(encoded["input_ids"][index]),
                                                                                 labels)))
    import torch

    for ignore in ignored:
        decoder = EntityDecoder(tokenizer, reference.model.config.id2label, strategy, ignore)
        rows = sorted(chunks)
        items = [[Item(row, enc.ids, enc, None, n, len(chunks[row])) for n, (enc, _) in enumerate(chunks[row])]
                 for row in rows]
        outputs = [[logits for _, logits in chunks[row]] for row in rows]
        got = decoder.decode([texts[row] for row in rows], items, outputs).to_pylist()
        for position, row in enumerate(rows):
            model_outputs = [{"logits": torch.from_numpy(logits)[None], "input_ids": [enc.ids],
                              "offset_mapping": [enc.offsets],
                              "special_tokens_mask": torch.tensor([enc.special_tokens_mask]),
                              "sentence": texts[row] if n == 0 else None, "is_last": n == len(chunks[row]) - 1}
                             for n, (enc, logits) in enumerate(chunks[row])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fallback-heuristic warning of word strategies
                want = reference.postprocess(model_outputs, aggregation_strategy=AggregationStrategy[strategy.upper()],
                                             ignore_labels=ignore)
            want = [{k: (v.item() if hasattr(v, "item") else v) for k, v in e.items()} for e in want]
            assert got[position] == want, (strategy, stride, ignore, texts[row])
    assert any(got), "some entities must be found, or the comparison proves little"


def test_overlapping_entities_resolve_as_the_pipeline(pipeline_parts: tuple[Any, Any]) -> None:
    """Between overlapping entities of several stride windows: the longer, then the higher score, then the first."""
    from jobs.tasks.ner_decode import _resolve_overlaps

    _, reference = pipeline_parts
    entities = [("PER", 0.5, "a", 0, 4), ("LOC", 0.5, "b", 2, 6),  # same length and score: the first stays
                ("ORG", 0.4, "c", 10, 14), ("PER", 0.9, "d", 11, 15),  # same length: the higher score
                ("LOC", 0.9, "e", 20, 22), ("ORG", 0.1, "f", 21, 25),  # the longer, whatever its score
                ("PER", 0.3, "g", 30, 31)]
    as_dicts = [dict(zip(("entity_group", "score", "word", "start", "end"), e, strict=True)) for e in entities]
    want = [tuple(e.values()) for e in reference.aggregate_overlapping_entities(as_dicts)]
    assert _resolve_overlaps(entities) == want
    assert [e[2] for e in want] == ["a", "d", "f", "g"]
    assert _resolve_overlaps([]) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rows_without_any_token_decode_to_no_entities(strategy: str) -> None:
    """A batch whose rows have no token at all (GPT-2 adds no special tokens to an empty text)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path("gpt2")))
    id2label = AutoModelForTokenClassification.from_pretrained(str(tiny_model_path("bert-ner"))).config.id2label
    texts = ["", ""]
    encoded = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
    items = [[Item(row, enc.ids, enc, None, 0, 1)] for row, enc in enumerate(encoded.encodings)]
    outputs = [[np.zeros((len(enc.ids), len(id2label)), np.float32)] for enc in encoded.encodings]
    got = EntityDecoder(tokenizer, id2label, strategy, []).decode(texts, items, outputs)
    assert got.to_pylist() == [[], []]

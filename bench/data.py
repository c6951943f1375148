"""Deterministic benchmark datasets built from English text that ships offline.

Sources: the demo's news sentences (``jobs/testing/data/news_sentences.txt``) and the prose
of Python's own documentation (``pydoc_data.topics``, in every CPython). Rows are
drawn with a seeded generator, so the same arguments always give the same rows,
with a realistic spread of lengths: mostly single sentences, some short passages,
a few long ones for NER and tokenize; contexts of several hundred words with a
question about them for QA; paragraphs for summarization; sentences for translation.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

NEWS = Path(__file__).resolve().parents[1] / "jobs" / "testing" / "data" / "news_sentences.txt"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
WORD = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
QUESTION_TEMPLATES = (
    "What does the text say about {}?",
    "Which {} is described here?",
    "How is the {} used?",
    "What happens to {} in this case?",
    "Why would one use {}?",
)
SENTENCES_PER_ROW = ((1, 0.62), (2, 0.2), (3, 0.1), (5, 0.05), (9, 0.03))
"""How many consecutive sentences a NER/tokenize row holds, with their probabilities."""
ROW_GROUP_ROWS = 1024


@lru_cache(maxsize=1)
def paragraphs() -> tuple[str, ...]:
    """Prose paragraphs: the news sentences as one block, then pydoc's text blocks (no code)."""
    import pydoc_data.topics

    found = [" ".join(line.strip() for line in NEWS.read_text().splitlines() if line.strip())]
    for name in sorted(pydoc_data.topics.topics):
        for block in pydoc_data.topics.topics[name].split("\n\n"):
            lines = block.splitlines()
            if not lines or lines[0].startswith((" ", "*" * 3, "=")) or block.rstrip().endswith(":"):
                continue
            text = " ".join(line.strip().lstrip("* ").strip() for line in lines)
            if len(text.split()) >= 12 and "::=" not in text and ">>>" not in text:
                found.append(re.sub(r"\s+", " ", text))
    return tuple(found)


@lru_cache(maxsize=1)
def sentences() -> tuple[tuple[str, ...], ...]:
    """Each paragraph split into sentences."""
    return tuple(tuple(s for s in SENTENCE_END.split(p) if len(s.split()) >= 3) for p in paragraphs())


def _passage(rng: random.Random, count: int) -> str:
    """``count`` consecutive sentences (fewer if the paragraph is short)."""
    groups = [g for g in sentences() if g]
    group = groups[rng.randrange(len(groups))]
    start = rng.randrange(max(1, len(group) - count + 1))
    return " ".join(group[start : start + count])


def _sentence_count(rng: random.Random) -> int:
    value = rng.random()
    for count, probability in SENTENCES_PER_ROW:
        if value < probability:
            return count
        value -= probability
    return SENTENCES_PER_ROW[-1][0]


def text_rows(count: int, seed: int = 0) -> list[str]:
    """NER / tokenize rows: mostly one sentence, some passages of up to nine."""
    rng = random.Random(seed)
    return [_passage(rng, _sentence_count(rng)) for _ in range(count)]


def _words_passage(rng: random.Random, low: int, high: int) -> str:
    """Consecutive paragraphs (wrapping around) until a length drawn from [low, high] words."""
    target = rng.randint(low, high)
    all_paragraphs = paragraphs()
    index = rng.randrange(len(all_paragraphs))
    words: list[str] = []
    while len(words) < target:
        words.extend(all_paragraphs[index % len(all_paragraphs)].split())
        index += 1
    cut = words[:target]
    while cut and not cut[-1].endswith((".", "!", "?")) and len(cut) > low:
        cut.pop()  # end on a sentence when that keeps the length in range
    return " ".join(cut)


def qa_rows(count: int, seed: int = 0, low: int = 150, high: int = 600) -> tuple[list[str], list[str]]:
    """Questions and contexts of ``low`` to ``high`` words; each question names a word of its context."""
    rng = random.Random(seed)
    questions, contexts = [], []
    for _ in range(count):
        context = _words_passage(rng, low, high)
        candidates = WORD.findall(context) or ["it"]
        topic = candidates[rng.randrange(len(candidates))].lower()
        questions.append(QUESTION_TEMPLATES[rng.randrange(len(QUESTION_TEMPLATES))].format(topic))
        contexts.append(context)
    return questions, contexts


def article_rows(count: int, seed: int = 0, low: int = 60, high: int = 300) -> list[str]:
    """Summarization inputs: passages of ``low`` to ``high`` words."""
    rng = random.Random(seed)
    return [_words_passage(rng, low, high) for _ in range(count)]


def sentence_rows(count: int, seed: int = 0, max_words: int | None = None) -> list[str]:
    """Translation inputs: one or two sentences each (redrawn while longer than ``max_words``)."""
    rng = random.Random(seed)
    rows: list[str] = []
    while len(rows) < count:
        row = _passage(rng, 1 if rng.random() < 0.8 else 2)
        if max_words is None or len(row.split()) <= max_words:
            rows.append(row)
    return rows


def write_parquet(columns: dict[str, list[str]], path: Path) -> Path:
    """The rows as Parquet with an ``id`` column, row groups of ``ROW_GROUP_ROWS``."""
    first = next(iter(columns.values()))
    table = pa.table({"id": [f"row-{i}" for i in range(len(first))], **columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
    return path

"""A small English corpus for training tiny tokenizers.

It mixes the demo's news sentences with the prose of Python's own help topics
(``pydoc_data``, shipped with every CPython), so vocabularies are real English
and common words stay whole while rare ones split into several pieces.
"""

from __future__ import annotations

from pathlib import Path

NEWS_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "news_sentences.txt"


def corpus_lines(limit: int = 4000) -> list[str]:
    """Up to ``limit`` non-empty lines of English text, in a fixed order."""
    import pydoc_data.topics

    lines: list[str] = []
    if NEWS_SAMPLE.exists():
        lines.extend(line.strip() for line in NEWS_SAMPLE.read_text().splitlines() if line.strip())
    for name in sorted(pydoc_data.topics.topics):
        for line in pydoc_data.topics.topics[name].splitlines():
            line = line.strip()
            if len(line) > 20:
                lines.append(line)
    return lines[:limit]

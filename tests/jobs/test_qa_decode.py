"""QA span selection on random logits equals transformers 4.57's ``select_starts_ends`` / ``decode_spans``.

The reference is 4.57's own code (``jobs/testing/qa_457.py``, copied because transformers 5 no longer
ships it), fed one unpadded chunk at a time with a 2-D ``p_mask`` as 4.57's ``postprocess`` gives it. Ours takes a right-padded batch of chunks in one call. Random
lengths, answer-token masks, ``max_answer_len`` and candidate counts cover both of our paths: the
tensor band with ``topk`` and, when fewer spans score above zero than are asked for, numpy's own
tie order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.tasks.qa_decode import MASKED_LOGIT, Spans, select_spans
from jobs.testing.qa_457 import select_starts_ends


def random_batch(rng: np.random.Generator, chunks: int, sharp: bool) -> tuple[list[np.ndarray], ...]:
    """Logits and answer masks of ``chunks`` chunks of random lengths: CLS, a question, then context."""
    starts, ends, keeps = [], [], []
    for _ in range(chunks):
        length = int(rng.integers(2, 40))
        question = int(rng.integers(0, length))
        keep = np.zeros(length, dtype=bool)
        keep[0] = True
        keep[1 + question:] = rng.random(length - 1 - question) < 0.9  # a few context tokens masked
        scale = 4.0 if sharp else 1.0
        starts.append((rng.normal(size=length) * scale).astype(np.float32))
        ends.append((rng.normal(size=length) * scale).astype(np.float32))
        keeps.append(keep)
    # Edge chunks: CLS masked (4.57 still lets index 0 through while any token is allowed), one context
    # token only (fewer positive spans than most candidate counts), nothing allowed at all.
    edges = [np.array([False, True, True, False, True]), np.array([True, False, True]), np.zeros(4, dtype=bool)]
    for keep in edges:
        starts.append(rng.normal(size=len(keep)).astype(np.float32))
        ends.append(rng.normal(size=len(keep)).astype(np.float32))
        keeps.append(keep)
    return starts, ends, keeps


def padded(arrays: list[np.ndarray], fill: float | bool) -> torch.Tensor:
    width = max(len(a) for a in arrays)
    out = np.full((len(arrays), width), fill, dtype=arrays[0].dtype)
    for row, array in enumerate(arrays):
        out[row, : len(array)] = array
    return torch.from_numpy(out)


CASES = [  # (candidates, max_answer_len, sharp logits)
    (1, 15, False),
    (1, 1, True),
    (2, 1, False),
    (2, 15, True),
    (3, 4, False),
    (12, 15, True),
    (30, 2, False),  # more candidates than spans that fit: numpy's tie order
    (400, 60, False),  # more candidates than the whole band holds
    (5, 60, True),  # an answer length past every chunk's end
]


@pytest.mark.parametrize(("candidates", "max_answer_len", "sharp"), CASES)
def test_spans_equal_457(candidates: int, max_answer_len: int, sharp: bool) -> None:
    rng = np.random.default_rng(candidates * 100 + max_answer_len)
    starts, ends, keeps = random_batch(rng, 24, sharp)
    attention = padded([np.ones(len(k), dtype=bool) for k in keeps], False)
    got = select_spans(padded(starts, 0.0), padded(ends, 0.0), padded(keeps, False), attention, candidates,
                       max_answer_len)
    assert len(got) == len(keeps)
    for chunk, (spans, start, end, keep) in enumerate(zip(got, starts, ends, keeps, strict=True)):
        want_starts, want_ends, want_scores, want_null = select_starts_ends(
            start[None], end[None], (~keep).astype(np.int64)[None], None, top_k=candidates,
            handle_impossible_answer=True, max_answer_len=max_answer_len)
        assert isinstance(spans, Spans)
        assert (spans.starts, spans.ends) == (want_starts.tolist(), want_ends.tolist()), chunk
        assert spans.scores == pytest.approx(want_scores.tolist(), rel=1e-5, abs=1e-12), chunk
        assert spans.null_score == pytest.approx(want_null, rel=1e-5, abs=1e-12), chunk


def test_padding_neither_scores_nor_shifts_spans() -> None:
    """A chunk alone and the same chunk padded next to a longer one give the same spans and scores."""
    rng = np.random.default_rng(3)
    starts, ends, keeps = random_batch(rng, 2, sharp=True)
    order = sorted(range(2), key=lambda i: len(keeps[i]))
    short = order[0]
    alone = select_spans(padded([starts[short]], 0.0), padded([ends[short]], 0.0), padded([keeps[short]], False),
                         padded([np.ones(len(keeps[short]), dtype=bool)], False), 5, 15)[0]
    together = select_spans(padded(starts, 7.0), padded(ends, 7.0), padded(keeps, True),
                            padded([np.ones(len(k), dtype=bool) for k in keeps], False), 5, 15)[short]
    assert (alone.starts, alone.ends) == (together.starts, together.ends)
    assert alone.scores == pytest.approx(together.scores, rel=1e-6)
    assert alone.null_score == pytest.approx(together.null_score, rel=1e-6)


def test_masked_tokens_get_the_457_logit() -> None:
    """Masked tokens still share the softmax at -10000 (4.57), so a chunk of masked tokens only is uniform."""
    logits = torch.tensor([[3.0, 1.0, -2.0]])
    keep = torch.tensor([[False, False, False]])
    attention = torch.ones_like(keep)
    spans = select_spans(logits, logits, keep, attention, 1, 15)[0]
    assert MASKED_LOGIT == -10000.0
    assert spans.null_score == pytest.approx(1 / 9)
    assert (spans.starts, spans.ends) == ([], [])  # no token may be part of an answer

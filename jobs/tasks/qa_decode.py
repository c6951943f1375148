"""Question answering's span selection, as 4.57's ``select_starts_ends`` / ``decode_spans`` give it.

Pure functions of a model batch's start and end logits and of a chunk's tokenizer encoding,
kept apart from the runner (tokenizing, batching, merging chunks) so that they can be tested,
and mutation-tested, on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MASKED_LOGIT = -10000.0
"""What 4.57 writes over the logits of tokens that cannot be part of an answer."""


@dataclass
class Spans:
    """A chunk's candidate spans, best first, and its null (CLS) score."""

    starts: list[int]
    ends: list[int]
    scores: list[float]
    null_score: float


def char_span(
    encoding: Any, start: int, end: int, question_first: bool, align_to_words: bool
) -> tuple[int, int]:
    """Character span of tokens ``start..end`` in the context, widened to whole words if asked."""
    if align_to_words:
        sequence = 1 if question_first else 0
        try:
            return (
                encoding.word_to_chars(encoding.token_to_word(start), sequence_index=sequence)[0],
                encoding.word_to_chars(encoding.token_to_word(end), sequence_index=sequence)[1],
            )
        except Exception:  # special tokens have no word; 4.57 falls back to the token offsets
            pass
    return encoding.offsets[start][0], encoding.offsets[end][1]


def select_spans(
    start: torch.Tensor,
    end: torch.Tensor,
    keep: torch.Tensor,
    attention: torch.Tensor,
    candidates: int,
    max_answer_len: int,
) -> list[Spans]:
    """Each chunk's best ``candidates`` spans by ``p_start * p_end``, as 4.57's ``select_starts_ends``.

    ``start``/``end`` are float32 logits ``(chunks, tokens)`` of a right-padded batch.
    Only spans with ``0 <= end - start < max_answer_len`` count; the scores are laid out
    as a band ``(chunks, tokens, max_answer_len)`` rather than a full outer product.
    """
    import torch

    p_start, p_end = _probabilities(start, keep, attention), _probabilities(end, keep, attention)
    null_scores = (p_start[:, 0] * p_end[:, 0]).tolist()
    p_start[:, 0] = 0.0
    p_end[:, 0] = 0.0
    width = min(max_answer_len, p_start.shape[1])
    # windows[c, s, d] = p_end[c, s + d], zero past the end of the chunk
    windows = torch.nn.functional.pad(p_end, (0, width - 1)).unfold(1, width, 1)
    band = (p_start.unsqueeze(-1) * windows).flatten(1)
    k = min(candidates, band.shape[1])
    # For one candidate take the first maximum, as np.argmax does.
    flat = band.argmax(dim=1, keepdim=True) if k == 1 else band.topk(k, dim=1).indices
    scores = band.gather(1, flat)
    starts = torch.div(flat, width, rounding_mode="floor")
    ends = (starts + flat % width).clamp(max=p_start.shape[1] - 1)  # spans past the end score 0 anyway
    allowed = _allowed(keep & attention)
    passes = allowed.gather(1, starts) & allowed.gather(1, ends)
    positives = (band > 0).sum(dim=1).tolist()
    # one transfer to the host for the whole batch, then plain lists per chunk
    all_starts, all_ends, all_scores, all_passes = (starts.tolist(), ends.tolist(), scores.tolist(), passes.tolist())
    lengths = attention.sum(dim=1).tolist()
    result = []
    for c, null_score in enumerate(null_scores):
        if positives[c] < candidates:
            n = int(lengths[c])
            chunk = (p_start[c, :n], p_end[c, :n], keep[c, :n])
            result.append(_decode_with_numpy(*chunk, candidates, max_answer_len, null_score))
            continue
        ok = all_passes[c]
        result.append(Spans([v for v, o in zip(all_starts[c], ok, strict=True) if o],
                            [v for v, o in zip(all_ends[c], ok, strict=True) if o],
                            [v for v, o in zip(all_scores[c], ok, strict=True) if o], null_score))
    return result


def _probabilities(logits: torch.Tensor, keep: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Softmax over a chunk's tokens with non-answer tokens at -10000 (4.57) and padding left out."""
    import torch

    masked = logits.masked_fill(~(keep & attention), MASKED_LOGIT).masked_fill(~attention, float("-inf"))
    return torch.softmax(masked, dim=-1)


def _allowed(keep: torch.Tensor) -> torch.Tensor:
    """Token positions a span may start or end on; 4.57's ``np.isin(x, mask.nonzero())`` on a
    2-D mask also lets index 0 through (the row indices), whenever any token is allowed."""
    allowed = keep.clone()
    allowed[:, 0] |= keep.any(dim=1)
    return allowed


def _decode_with_numpy(
    p_start: torch.Tensor,
    p_end: torch.Tensor,
    keep: torch.Tensor,
    candidates: int,
    max_answer_len: int,
    null_score: float,
) -> Spans:
    """4.57's ``decode_spans`` itself, for a chunk with fewer positive spans than ``candidates``.

    Then zero-score spans are among those kept, and which ones depends on numpy's
    tie order in ``argpartition``/``argsort``; only numpy reproduces it.
    """
    start, end = p_start.cpu().numpy()[None], p_end.cpu().numpy()[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    band = np.tril(np.triu(outer), max_answer_len - 1)
    flat = band.flatten()
    if candidates == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < candidates:
        order = np.argsort(-flat)
    else:
        order = np.argpartition(-flat, candidates)[0:candidates]
        order = order[np.argsort(-flat[order])]
    starts, ends = np.unravel_index(order, band.shape)[1:]
    allowed = _allowed(keep[None])[0].cpu().numpy()
    ok = allowed[starts] & allowed[ends]
    starts, ends = starts[ok], ends[ok]
    return Spans(starts.tolist(), ends.tolist(), band[0, starts, ends].tolist(), null_score)

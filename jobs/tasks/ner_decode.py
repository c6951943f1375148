"""The token-classification pipeline's post-processing, on arrays for many rows at once.

Equal to ``TokenClassificationPipeline.postprocess`` (transformers 4.57 and 5.x share it):
a float32 softmax over labels per token, special tokens skipped, then

- ``none``: every token whose label is not ignored;
- ``simple``: consecutive tokens grouped (a ``B-`` tag or another tag starts a group);
- ``first`` / ``average`` / ``max``: tokens first joined into words (a token starts a word
  unless it is a subword), each word labelled by its first token, the mean of its
  probability vectors, or its most confident token; then words grouped as ``simple``.

Group scores are numpy's own float32 means of the kept groups, equal to the pipeline's. With several chunks per text
(``stride``), each chunk is processed alone and overlapping entities are resolved as the
pipeline does (longer wins, then higher score). Words are joined with the tokenizer's own
decoder (``convert_tokens_to_string``), only for the entities that are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

NO_WORDS = ("none", "simple")


class EntityDecoder:
    """Entities of finished rows as one Arrow ``list<struct>`` column."""

    def __init__(self, tokenizer: Any, id2label: dict[int, str], strategy: str, ignore_labels: list[str]) -> None:
        self.strategy = strategy
        self.unk_id = tokenizer.unk_token_id
        size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
        self.tokens = np.array(tokenizer.convert_ids_to_tokens(list(range(size))), dtype=object)
        backend = getattr(tokenizer, "_tokenizer", None)
        decoder = backend.decoder if backend is not None else None
        self.join = decoder.decode if decoder is not None else (lambda tokens: " ".join(tokens))
        self.word_aware = bool(backend is not None and getattr(backend.model, "continuing_subword_prefix", None))
        self.token_lengths = np.fromiter((len(t) for t in self.tokens), dtype=np.int64, count=len(self.tokens))
        labels = [id2label[i] for i in range(len(id2label))]
        self.labels = np.array(labels, dtype=object)
        # grouping: a B- tag starts a group; otherwise a change of tag does (pipeline.get_tag)
        self.is_begin = np.array([label.startswith("B-") for label in labels], dtype=bool)
        tags = [label[2:] if label.startswith(("B-", "I-")) else label for label in labels]
        self.tag_ids = np.unique(np.array(tags, dtype=object), return_inverse=True)[1].astype(np.int64)
        group_names = [label.split("-", 1)[-1] for label in labels]
        self.group_names = np.array(group_names, dtype=object)
        names = group_names if strategy not in ("none",) else labels
        self.kept_label = np.array([name not in ignore_labels for name in names], dtype=bool)
        self.struct = entity_struct(strategy)

    # -- the whole batch of rows -----------------------------------------------------

    def decode(self, texts: list[str], items: list[list[Any]], outputs: list[list[np.ndarray]]) -> pa.Array:
        chunks = [(r, item.data, logits) for r, (row_items, row_outputs) in enumerate(zip(items, outputs, strict=True))
                  for item, logits in zip(row_items, row_outputs, strict=True)]
        per_row: list[list[tuple[Any, ...]]] = [[] for _ in texts]
        if chunks:
            tokens = self._tokens(chunks)
            entities = self._entities(texts, tokens)
            multi = {r for r, row_items in enumerate(items) if len(row_items) > 1}
            for entity in entities:
                per_row[entity[0]].append(entity[1:])
            for r in multi:
                per_row[r] = _resolve_overlaps(per_row[r])
        return self._arrow(per_row)

    def _tokens(self, chunks: list[tuple[int, Any, np.ndarray]]) -> dict[str, Any]:
        """Flat arrays over the non-special tokens of every chunk, in row and chunk order.

        Character spans of every token are read only when words are built (first/average/max);
        otherwise only the spans of kept entities are, one by one."""
        lengths = np.fromiter((len(logits) for _, _, logits in chunks), dtype=np.int64, count=len(chunks))
        total = int(lengths.sum())
        encodings = [enc for _, enc, _ in chunks]
        special = np.fromiter(chain.from_iterable(enc.special_tokens_mask for enc in encodings), dtype=np.int8,
                              count=total)
        ids = np.fromiter(chain.from_iterable(enc.ids for enc in encodings), dtype=np.int64, count=total)
        logits = np.concatenate([logits for _, _, logits in chunks]) if total else np.zeros((0, len(self.labels)),
                                                                                             np.float32)
        chunk = np.repeat(np.arange(len(chunks)), lengths)
        index = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = special == 0
        maxes = np.max(logits[keep], axis=-1, keepdims=True) if keep.any() else np.zeros((0, 1), np.float32)
        shifted = np.exp(logits[keep] - maxes)
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        rows = np.fromiter((r for r, _, _ in chunks), dtype=np.int64, count=len(chunks))
        tokens: dict[str, Any] = {"ids": ids[keep], "chunk": chunk[keep], "index": index[keep],
                                  "probabilities": probabilities, "row": rows[chunk[keep]], "encodings": encodings}
        if self.strategy not in NO_WORDS:
            spans = np.fromiter(chain.from_iterable(chain.from_iterable(enc.offsets for enc in encodings)),
                                dtype=np.int64, count=2 * total).reshape(total, 2)
            tokens.update(start=spans[keep, 0], end=spans[keep, 1])
        return tokens

    @staticmethod
    def _span(t: dict[str, Any], i: int) -> tuple[int, int]:
        """Character span of kept token ``i``."""
        if "start" in t:
            return int(t["start"][i]), int(t["end"][i])
        start, end = t["encodings"][int(t["chunk"][i])].token_to_chars(int(t["index"][i]))
        return int(start), int(end)

    def _entities(self, texts: list[str], t: dict[str, np.ndarray]) -> list[tuple[Any, ...]]:
        """(row, label, score, [index,] word, start, end) of every kept entity, in order."""
        probabilities = t["probabilities"]
        count = len(t["ids"])
        if count == 0:
            return []
        first_of_chunk = np.ones(count, dtype=bool)
        first_of_chunk[1:] = t["chunk"][1:] != t["chunk"][:-1]
        if self.strategy in NO_WORDS:
            label = probabilities.argmax(axis=-1)
            score = probabilities[np.arange(count), label]
            if self.strategy == "none":
                return self._tokens_as_entities(texts, t, label, score)
            return self._groups(texts, t, label, score, first_of_chunk, word_of=None)
        starts = np.flatnonzero(first_of_chunk | ~self._subwords(texts, t))
        label, score = self._word_labels(probabilities, starts)
        return self._groups(texts, t, label, score, first_of_chunk[starts], word_of=starts)

    def _tokens_as_entities(self, texts: list[str], t: dict[str, np.ndarray], label: np.ndarray,
                            score: np.ndarray) -> list[tuple[Any, ...]]:
        kept = np.flatnonzero(self.kept_label[label]).tolist()
        return [(int(t["row"][i]), self.labels[label[i]], float(score[i]), int(t["index"][i]),
                 self._raw_token(texts, t, i), *self._span(t, i)) for i in kept]

    def _subwords(self, texts: list[str], t: dict[str, np.ndarray]) -> np.ndarray:
        """The pipeline's ``is_subword`` per token: its own length differs from its text's (word-aware
        tokenizers), else the character before it is not a space."""
        ids, start, end = t["ids"], t["start"], t["end"]
        if self.word_aware:
            subword = self.token_lengths[ids] != (end - start)
        else:
            rows = t["row"]
            subword = np.array([s > 0 and " " not in texts[r][s - 1 : s + 1]
                                for r, s in zip(rows.tolist(), start.tolist(), strict=True)], dtype=bool)
        return subword & (ids != self.unk_id)

    def _word_labels(self, probabilities: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label and float32 score of each word (tokens ``starts[i]`` up to the next start)."""
        if self.strategy == "first":
            scores = probabilities[starts]
        elif self.strategy == "average":
            # np.nanmean over a word's rows adds them one after another; so do we, for all words at once
            sizes = np.diff(np.append(starts, len(probabilities)))
            totals = probabilities[starts].copy()
            for offset in range(1, int(sizes.max())):
                longer = np.flatnonzero(sizes > offset)
                totals[longer] += probabilities[starts[longer] + offset]
            scores = (totals.astype(np.float64) / sizes[:, None]).astype(np.float32)
        else:  # max: the word's first token with the highest top probability
            top = probabilities.max(axis=-1)
            word = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(probabilities))))
            best = np.maximum.reduceat(top, starts)
            candidates = np.flatnonzero(top == best[word])
            _, first = np.unique(word[candidates], return_index=True)
            scores = probabilities[candidates[first]]
        label = scores.argmax(axis=-1)
        return label, scores[np.arange(len(starts)), label]

    def _groups(self, texts: list[str], t: dict[str, np.ndarray], label: np.ndarray, score: np.ndarray,
                first_of_chunk: np.ndarray, word_of: np.ndarray | None) -> list[tuple[Any, ...]]:
        """Consecutive units (tokens, or words starting at ``word_of``) grouped by tag, kept groups only."""
        tags = self.tag_ids[label]
        new = first_of_chunk.copy()
        new[1:] |= (tags[1:] != tags[:-1]) | self.is_begin[label[1:]]
        begins = np.flatnonzero(new)
        sizes = np.diff(np.append(begins, len(label)))
        group_label = label[begins]
        kept = np.flatnonzero(self.kept_label[group_label])
        if not len(kept):
            return []
        units = len(label)
        result = []
        for g in kept.tolist():
            first, size = int(begins[g]), int(sizes[g])
            # numpy's own float32 mean, as the pipeline takes it (a vectorised sum rounds differently)
            mean = float(np.nanmean(score[first : first + size])) if size > 1 else float(score[first])
            last = first + size - 1
            if word_of is None:
                word = self.join([self._raw_token(texts, t, i) for i in range(first, last + 1)])
                start, end = self._span(t, first)[0], self._span(t, last)[1]
            else:
                word = self.join([self._word(texts, t, word_of, w, units) for w in range(first, last + 1)])
                start = t["start"][word_of[first]]
                end_token = (word_of[last + 1] if last + 1 < units else len(t["ids"])) - 1
                end = t["end"][end_token]
            result.append((int(t["row"][word_of[first] if word_of is not None else first]),
                           self.group_names[group_label[g]], mean, word, int(start), int(end)))
        return result

    def _word(self, texts: list[str], t: dict[str, np.ndarray], word_of: np.ndarray, w: int, units: int) -> str:
        first = int(word_of[w])
        stop = int(word_of[w + 1]) if w + 1 < units else len(t["ids"])
        return str(self.join([self._raw_token(texts, t, i) for i in range(first, stop)]))

    def _raw_token(self, texts: list[str], t: dict[str, np.ndarray], i: int) -> str:
        """The vocabulary token; an unknown token is the text it covers."""
        token_id = int(t["ids"][i])
        if token_id == self.unk_id:
            start, end = self._span(t, i)
            return texts[int(t["row"][i])][start:end]
        return str(self.tokens[token_id])

    def _arrow(self, per_row: list[list[tuple[Any, ...]]]) -> pa.Array:
        offsets = np.zeros(len(per_row) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(entities) for entities in per_row])
        flat = [entity for entities in per_row for entity in entities]
        names = [f.name for f in self.struct]
        columns = [pa.array([e[k] for e in flat], type=self.struct.field(k).type) for k in range(len(names))]
        values = pa.StructArray.from_arrays(columns, fields=list(self.struct))
        return pa.ListArray.from_arrays(pa.array(offsets), values)


def _resolve_overlaps(entities: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The pipeline's ``aggregate_overlapping_entities``: by start; on overlap the longer, then the higher score."""
    if not entities:
        return []
    ordered = sorted(entities, key=lambda e: e[-2])
    kept = []
    previous = ordered[0]
    for entity in ordered:
        if previous[-2] <= entity[-2] < previous[-1]:
            length, previous_length = entity[-1] - entity[-2], previous[-1] - previous[-2]
            if length > previous_length or (length == previous_length and entity[1] > previous[1]):
                previous = entity
        else:
            kept.append(previous)
            previous = entity
    kept.append(previous)
    return kept


def entity_struct(aggregation: str) -> pa.StructType:
    """One entity as the pipeline returned it: ``entity`` and ``index`` per token, ``entity_group`` per group."""
    label = "entity" if aggregation == "none" else "entity_group"
    fields = [
        pa.field(label, pa.string()),
        pa.field("score", pa.float64()),
        pa.field("word", pa.string()),
        pa.field("start", pa.int64()),
        pa.field("end", pa.int64()),
    ]
    if aggregation == "none":
        fields.insert(2, pa.field("index", pa.int64()))
    return pa.struct(fields)

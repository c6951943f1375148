"""Extractive question answering, as transformers 4.57 ``pipeline("question-answering")`` gives it.

transformers 5 no longer ships that pipeline, so its behaviour is re-implemented
here (see PIPELINE_SEMANTICS.md): long contexts are cut into overlapping chunks,
every chunk proposes spans scored ``p_start * p_end``, and the chunks' answers are
merged per row. Faster than 4.57 because, on :mod:`jobs.engine.staged`, a block of rows is
tokenized in one call, chunks run length-sorted in padded model batches, and span
scoring is one tensor operation per model batch (on the device) instead of a numpy
outer product per chunk.

``batch_size`` counts chunks (model rows), as 4.57 did.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, TaskParams
from jobs.engine.batching import text_error
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.model_task import ModelTask
from jobs.engine.padding import pad
from jobs.engine.staged import StagedRunner
from jobs.errors import SpecError
from jobs.tasks.qa_decode import Spans, char_span, select_spans

NULL_SCORE_START = 1000000
"""4.57's initial ``min_null_score`` ("large and positive")."""
DEFAULT_MAX_SEQ_LEN = 384
ANSWER_FIELDS = ("answer", "score", "start", "end")


class QuestionAnsweringParams(TaskParams):
    top_k: int = Field(1, ge=1, description="Answers per row, best first.")
    doc_stride: int | None = Field(
        None, ge=0, description="Overlap in tokens between chunks; default min(max_seq_len // 2, 128)."
    )
    max_seq_len: int | None = Field(
        None, ge=1, description="Tokens per chunk (question included); default min(model_max_length, 384)."
    )
    max_answer_len: int = Field(15, ge=1, description="Longest answer, in tokens.")
    handle_impossible_answer: bool = Field(
        False, description="Allow the empty answer (score of the CLS span)."
    )
    align_to_words: bool = Field(True, description="Widen answers to whole words.")

    @model_validator(mode="after")
    def _stride_fits(self) -> QuestionAnsweringParams:
        if (
            self.doc_stride is not None
            and self.max_seq_len is not None
            and self.doc_stride > self.max_seq_len
        ):
            raise ValueError(
                f"doc_stride ({self.doc_stride}) is larger than max_seq_len ({self.max_seq_len})"
            )
        return self


class QuestionAnsweringTask(ModelTask):
    name = "qa"
    model_requirement = ModelRequirement("an extractive question-answering model",
                                         "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", head_weights=("qa_outputs",))
    input_roles = ("question", "context")
    auto_class = "AutoModelForQuestionAnswering"
    needs_fast_tokenizer = "question answering needs a fast tokenizer (offsets, words)"
    Params = QuestionAnsweringParams
    default_model = "distilbert/distilbert-base-cased-distilled-squad"
    params: QuestionAnsweringParams

    def output_schema(self) -> pa.Schema:
        if self.params.top_k == 1:
            return pa.schema(list(answer_struct()))
        return pa.schema([pa.field("answers", pa.list_(answer_struct()))])

    def check_tokenizer(self, tokenizer: Any, options: LoadOptions) -> None:
        self.settings = resolve_settings(self.params, tokenizer)

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        return QuestionAnsweringRunner(self, self.settings, model, tokenizer, device)


def answer_struct() -> pa.StructType:
    return pa.struct(
        [
            pa.field("answer", pa.string()),
            pa.field("score", pa.float64()),
            pa.field("start", pa.int64()),
            pa.field("end", pa.int64()),
        ]
    )


@dataclass(frozen=True)
class QaSettings:
    """The parameters with the tokenizer-dependent defaults filled in."""

    top_k: int
    doc_stride: int
    max_seq_len: int
    max_answer_len: int
    handle_impossible_answer: bool
    align_to_words: bool
    question_first: bool

    @property
    def candidates(self) -> int:
        """Spans kept per chunk before filtering: extra ones when word alignment may merge some."""
        return self.top_k * 2 + 10 if self.align_to_words else self.top_k


def resolve_settings(params: QuestionAnsweringParams, tokenizer: Any) -> QaSettings:
    max_seq_len = params.max_seq_len or min(tokenizer.model_max_length, DEFAULT_MAX_SEQ_LEN)
    doc_stride = params.doc_stride if params.doc_stride is not None else min(max_seq_len // 2, 128)
    special = tokenizer.num_special_tokens_to_add(pair=True)
    if max_seq_len <= special:
        raise SpecError(
            "params.max_seq_len", f"max_seq_len ({max_seq_len}) leaves no room for the question and context"
        )
    room = max_seq_len - tokenizer.num_special_tokens_to_add(pair=False)
    if doc_stride > room:  # the tokenizer refuses such a stride for every row
        raise SpecError(
            "params.doc_stride",
            f"doc_stride ({doc_stride}) must not exceed max_seq_len ({max_seq_len}) minus the "
            f"{max_seq_len - room} special tokens the tokenizer adds; lower doc_stride or raise max_seq_len",
        )
    return QaSettings(
        top_k=params.top_k,
        doc_stride=doc_stride,
        max_seq_len=max_seq_len,
        max_answer_len=params.max_answer_len,
        handle_impossible_answer=params.handle_impossible_answer,
        align_to_words=params.align_to_words,
        # Left-padding tokenizers put the context first and truncate it as the first sequence.
        question_first=tokenizer.padding_side == "right",
    )


def pair_error(question: Any, context: Any) -> str | None:
    """Why a row cannot be answered (4.57 raises for these), or None."""
    for role, value in (("question", question), ("context", context)):
        error = text_error(value, role)
        if error is None and not value:
            error = f"{role} cannot be empty"
        if error:
            return error
    return None


@dataclass
class Chunk:
    """What decode needs of one model row: a window of a row's context plus the question."""

    encoding: Any  # tokenizers.Encoding
    keep: np.ndarray  # bool per token: may be part of an answer (4.57's ``1 - p_mask``)


class QuestionAnsweringRunner(StagedRunner):
    input_roles = ("question", "context")

    def __init__(self, task: QuestionAnsweringTask, settings: QaSettings, model: Any, tokenizer: Any,
                 device: Any) -> None:
        super().__init__(task.output_schema(), device=device,
                         pad_id=tokenizer.pad_token_id or 0,
                         with_type_ids="token_type_ids" in tokenizer.model_input_names)
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def row_error(self, values: dict[str, Any]) -> str | None:
        return pair_error(values["question"], values["context"])

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        """One tokenizer call for the block; each overflow window becomes an item."""
        questions, contexts = inputs["question"], inputs["context"]
        errors = self._too_long_errors([questions[r] for r in rows], [contexts[r] for r in rows])
        failed = {row: error for row, error in zip(rows, errors, strict=True) if error is not None}
        return self._chunks(questions, contexts, [row for row in rows if row not in failed], failed)

    def _chunks(self, questions: list[str], contexts: list[str], rows: list[int],
                errors: dict[int, str]) -> Encoded:
        s = self.settings
        if not rows:
            return Encoded([], errors)
        first, second = (questions, contexts) if s.question_first else (contexts, questions)
        encoded = self.tokenizer(
            [first[r] for r in rows],
            [second[r] for r in rows],
            truncation="only_second" if s.question_first else "only_first",
            max_length=s.max_seq_len,
            stride=s.doc_stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        owners = encoded.get("overflow_to_sample_mapping") or list(range(len(rows)))
        parts = [0] * len(rows)
        for owner in owners:
            parts[owner] += 1
        seen = [0] * len(rows)
        cls_id = self.tokenizer.cls_token_id
        items = []
        for index, (owner, encoding) in enumerate(zip(owners, encoded.encodings, strict=True)):
            ids = encoded["input_ids"][index]
            if s.question_first:
                sequence = np.array(encoding.sequence_ids, dtype=float)  # None -> nan
                keep = (sequence == 1) | (np.array(ids) == cls_id)
            else:
                keep = np.ones(len(ids), dtype=bool)  # 4.57 masks nothing then
            items.append(Item(rows[owner], ids, Chunk(encoding, keep), encoded["token_type_ids"][index],
                              seen[owner], parts[owner]))
            seen[owner] += 1
        return Encoded(items, errors)

    def _too_long_errors(self, questions: list[str], contexts: list[str]) -> list[str | None]:
        """Flag rows whose question leaves no room for a context chunk longer than the stride.

        The tokenizer fails (or panics, a BaseException) on them and would take the
        whole block down; 4.57 raised for such a row too.
        """
        s = self.settings
        errors: list[str | None] = [None] * len(questions)
        if not questions:
            return errors
        special = self.tokenizer.num_special_tokens_to_add(pair=True)
        q_lengths = self._token_counts(questions)
        risky = [(i, n) for i, n in enumerate(q_lengths) if s.max_seq_len - n - special <= s.doc_stride]
        if not risky:
            return errors
        c_lengths = self._token_counts([contexts[i] for i, _ in risky])
        for (i, q_len), c_len in zip(risky, c_lengths, strict=True):
            if q_len + c_len + special > s.max_seq_len:
                errors[i] = (
                    f"question is too long ({q_len} tokens): with max_seq_len={s.max_seq_len} and "
                    f"doc_stride={s.doc_stride} no context fits in a chunk; "
                    "raise max_seq_len or lower doc_stride"
                )
        return errors

    def _token_counts(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def forward(self, batch: Batch) -> Sequence[Spans]:
        """Run one padded model batch and pick each chunk's candidate spans on the device."""
        import torch

        model_inputs = dict(batch.tensors)
        if self.no_cache:
            model_inputs["use_cache"] = False
        output = self.model(**model_inputs)
        attention = batch.tensors["attention_mask"].bool()
        keep = torch.from_numpy(pad([item.data.keep for item in batch.items], False, dtype=np.bool_))
        return select_spans(
            output.start_logits.float(),
            output.end_logits.float(),
            keep.to(attention.device),
            attention,
            self.settings.candidates,
            self.settings.max_answer_len,
        )

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        contexts = inputs["context"]
        rows = [self._result(self._merge(contexts[row], items, spans))
                for row, items, spans in zip(finished.rows, finished.items, finished.outputs, strict=True)]
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _result(self, answers: list[dict[str, Any]]) -> dict[str, Any]:
        """Output columns of one row; with top_k 1 a row without any answer gets nulls."""
        if self.settings.top_k > 1:
            return {"answers": answers}
        best = answers[0] if answers else {}
        return {name: best.get(name) for name in ANSWER_FIELDS}

    def _merge(self, context: str, items: list[Item], spans: list[Spans]) -> list[dict[str, Any]]:
        """4.57's post-processing: spans to text, same-text answers add up, best ``top_k`` kept."""
        s = self.settings
        answers: list[dict[str, Any]] = []
        by_text: dict[str, dict[str, Any]] = {}
        min_null_score: float = NULL_SCORE_START
        for item, chunk_spans in zip(items, spans, strict=True):
            min_null_score = min(min_null_score, chunk_spans.null_score)
            offset = self._left_pad_offset(item)
            for start_token, end_token, score in zip(
                chunk_spans.starts, chunk_spans.ends, chunk_spans.scores, strict=True
            ):
                start, end = char_span(
                    item.data.encoding,
                    start_token - offset,
                    end_token - offset,
                    s.question_first,
                    s.align_to_words,
                )
                text = context[start:end]
                known = by_text.get(text.lower())
                if known is not None:
                    known["score"] += score
                else:
                    answer = {"answer": text, "score": score, "start": start, "end": end}
                    by_text[text.lower()] = answer
                    answers.append(answer)
        if s.handle_impossible_answer:
            answers.append({"answer": "", "score": min_null_score, "start": 0, "end": 0})
        return sorted(answers, key=lambda answer: answer["score"], reverse=True)[: s.top_k]

    def _left_pad_offset(self, item: Item) -> int:
        """4.57 shifts token indices by the pad tokens in a left-padded chunk; unpadded, that
        counts literal pad tokens in the text. Kept for parity; zero for right padding."""
        if self.settings.question_first or self.tokenizer.pad_token_id is None:
            return 0
        return list(item.ids).count(self.tokenizer.pad_token_id)

"""Summarization, as ``pipeline("summarization")`` in transformers 4.57 gave it.

One output per row, ``summary_text`` (a list with ``num_return_sequences`` > 1),
plus ``truncated``. The generation settings follow :mod:`jobs.tasks.seq2seq`; the
model's ``task_specific_params["summarization"]`` apply, prefix included (T5's
``"summarize: "``).
"""

from __future__ import annotations

import pyarrow as pa

from jobs.engine.base import LoadOptions, Runner, TaskType
from jobs.tasks.seq2seq import (
    SEQ2SEQ_ENGINES,
    SEQ2SEQ_MODEL,
    GenerationParams,
    Seq2SeqSettings,
    load_seq2seq,
    output_schema,
    resolve_generation,
    seq2seq_runner,
)

TEXT_COLUMN = "summary_text"


class SummarizationParams(GenerationParams):
    """Generation overrides and truncation; see :class:`jobs.tasks.seq2seq.GenerationParams`."""


class SummarizationTask(TaskType):
    name = "summarization"
    model_requirement = SEQ2SEQ_MODEL
    input_roles = ("text",)
    Params = SummarizationParams
    engines = SEQ2SEQ_ENGINES
    default_model = "sshleifer/distilbart-cnn-12-6"
    params: SummarizationParams

    def output_schema(self) -> pa.Schema:
        return output_schema(TEXT_COLUMN, self.params)

    def load(self, options: LoadOptions) -> Runner:
        tokenizer, model, device = load_seq2seq(options)
        generation, prefix = resolve_generation(model, tokenizer, "summarization", self.params)
        settings = Seq2SeqSettings(
            generation=generation,
            text_column=TEXT_COLUMN,
            returns=self.params.returns,
            truncation=self.params.truncation,
            prefix=prefix,
        )
        return seq2seq_runner(self, model, tokenizer, device, settings, options)

"""Summarization, as ``pipeline("summarization")`` in transformers 4.57 gave it.

One output per row, ``summary_text`` (a list with ``num_return_sequences`` > 1),
plus ``truncated``. The generation settings follow :mod:`jobs.tasks.seq2seq.generation`; the
model's ``task_specific_params["summarization"]`` apply, prefix included (T5's
``"summarize: "``).
"""

from __future__ import annotations

from typing import Any

from jobs.engine.base import LoadOptions
from jobs.tasks.seq2seq.generation import GenerationParams, resolve_generation
from jobs.tasks.seq2seq.runner import Seq2SeqSettings
from jobs.tasks.seq2seq.task import Seq2SeqTask

TEXT_COLUMN = "summary_text"


class SummarizationParams(GenerationParams):
    """Generation overrides and truncation; see :class:`jobs.tasks.seq2seq.generation.GenerationParams`."""


class SummarizationTask(Seq2SeqTask):
    name = "summarization"
    Params = SummarizationParams
    text_column = TEXT_COLUMN
    default_model = "sshleifer/distilbart-cnn-12-6"
    params: SummarizationParams

    def settings_for(self, model: Any, tokenizer: Any, options: LoadOptions) -> Seq2SeqSettings:
        generation, prefix = resolve_generation(model, tokenizer, "summarization", self.params)
        return Seq2SeqSettings(generation=generation, text_column=TEXT_COLUMN, returns=self.params.returns,
                               truncation=self.params.truncation, prefix=prefix)

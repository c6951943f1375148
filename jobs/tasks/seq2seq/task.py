"""What summarization and translation share: the model they need, the output, the engines, ``load``.

Each engine maps to the function that builds its runner from the loaded model and the
resolved settings; a task subclass says only how its settings are resolved
(:meth:`Seq2SeqTask.settings_for`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow as pa

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, TaskType
from jobs.tasks.seq2seq.generation import GenerationParams
from jobs.tasks.seq2seq.runner import Seq2SeqRunner, Seq2SeqSettings, load_seq2seq

SEQ2SEQ_MODEL = ModelRequirement("an encoder-decoder (seq2seq) model", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                                 encoder_decoder=True)  # what summarization and translation need

RunnerFactory = Callable[[TaskType, Any, Any, Any, Seq2SeqSettings, LoadOptions], Runner]


def _on_transformers(task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings,
                     options: LoadOptions) -> Runner:
    return Seq2SeqRunner(task, model, tokenizer, device, settings)


def _on_ctranslate2(task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings,
                    options: LoadOptions) -> Runner:
    from jobs.tasks.seq2seq.ctranslate2.runner import load_runner

    return load_runner(task, model, tokenizer, settings, options)


ENGINES: dict[str, RunnerFactory] = {"transformers": _on_transformers, "ctranslate2": _on_ctranslate2}
"""The spec's ``engine`` -> the runner built for it (the model is loaded by transformers either way)."""


def output_schema(text_column: str, params: GenerationParams) -> pa.Schema:
    """``<task>_text`` (a list when several sequences are returned) and ``truncated``."""
    text_type = pa.list_(pa.string()) if params.returns > 1 else pa.string()
    return pa.schema([pa.field(text_column, text_type), pa.field("truncated", pa.bool_())])


class Seq2SeqTask(TaskType):
    """An encoder-decoder task with one text input and one generated text column."""

    model_requirement = SEQ2SEQ_MODEL
    engines: ClassVar[dict[str, RunnerFactory]] = ENGINES
    text_column: ClassVar[str]
    params: GenerationParams

    @classmethod
    def check_engine(cls, engine: str, dtype: str, params: dict[str, Any]) -> None:
        """int8 and CTranslate2's own limits on parameters are checked here, before any worker loads."""
        if engine != "ctranslate2":
            super().check_engine(engine, dtype, params)
            return
        from jobs.tasks.seq2seq.ctranslate2.options import check_params, require

        require()
        check_params(params)

    def output_schema(self) -> pa.Schema:
        return output_schema(self.text_column, self.params)

    def load(self, options: LoadOptions) -> Runner:
        tokenizer, model, device = load_seq2seq(options)
        settings = self.settings_for(model, tokenizer, options)
        return self.engines[options.engine](self, model, tokenizer, device, settings, options)

    @abstractmethod
    def settings_for(self, model: Any, tokenizer: Any, options: LoadOptions) -> Seq2SeqSettings:
        """The resolved generation and input preparation of this task for a loaded model (may raise SpecError)."""

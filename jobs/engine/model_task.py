"""The load every model task shares: its tokenizer, its model through a transformers Auto class, its runner.

A task names the Auto class (by name: submit never imports transformers) and builds its
runner from what was loaded; :meth:`ModelTask.check_tokenizer` refuses, or adjusts, a
tokenizer before the model's weights are read.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from jobs.engine.base import LoadOptions, Runner, TaskType
from jobs.engine.loading import load_model, load_tokenizer
from jobs.errors import ModelLoadError


class ModelTask(TaskType):
    """A task run by one transformers model and its tokenizer."""

    auto_class: ClassVar[str]
    """The ``transformers`` Auto class the model loads with (``AutoModelForTokenClassification``)."""
    needs_fast_tokenizer: ClassVar[str | None] = None
    """Why the task needs a fast tokenizer, as the error says it ("NER needs a fast tokenizer (offsets)")."""

    def load(self, options: LoadOptions) -> Runner:
        import transformers

        tokenizer = load_tokenizer(options)
        if self.needs_fast_tokenizer and not tokenizer.is_fast:
            raise ModelLoadError(f"{options.model}: {self.needs_fast_tokenizer}")
        self.check_tokenizer(tokenizer, options)
        model, device = load_model(getattr(transformers, self.auto_class), options)
        return self.runner(model, tokenizer, device, options)

    def check_tokenizer(self, tokenizer: Any, options: LoadOptions) -> None:
        """Refuse (ModelLoadError) or adjust the tokenizer before the model loads; most tasks need nothing."""
        del tokenizer, options

    @abstractmethod
    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        """The task's runner for a loaded model (may refuse the model with ModelLoadError)."""

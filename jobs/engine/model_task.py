"""The load every model task shares: its tokenizer, its model through a transformers Auto class, its runner.

A task names the Auto class (by name: submit never imports transformers) and builds its
runner from what was loaded; :meth:`ModelTask.check_tokenizer` refuses, or adjusts, a
tokenizer before the model's weights are read. The engine is a load-time choice of what runs
that model (:data:`MODEL_LOADERS`): transformers, or ONNX Runtime's export of it, which the
runners call the same way.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from jobs.engine.base import LoadOptions, Runner, TaskType
from jobs.engine.loading import load_model, load_tokenizer
from jobs.errors import ModelLoadError


def _on_transformers(auto_class: str, options: LoadOptions) -> tuple[Any, Any]:
    import transformers

    return load_model(getattr(transformers, auto_class), options)


def _on_onnxruntime(auto_class: str, options: LoadOptions) -> tuple[Any, Any]:
    from jobs.engine.onnxruntime.loading import load_onnx_model

    return load_onnx_model(auto_class, options)


MODEL_LOADERS: dict[str, Callable[[str, LoadOptions], tuple[Any, Any]]] = {
    "transformers": _on_transformers,
    "onnxruntime": _on_onnxruntime,
}
"""The spec's ``engine`` -> (Auto class name, options) -> (model, device)."""


class ModelTask(TaskType):
    """A task run by one transformers model and its tokenizer."""

    engines: ClassVar[tuple[str, ...]] = ("transformers", "onnxruntime")

    auto_class: ClassVar[str]
    """The ``transformers`` Auto class the model loads with (``AutoModelForTokenClassification``)."""
    needs_fast_tokenizer: ClassVar[str | None] = None
    """Why the task needs a fast tokenizer, as the error says it ("NER needs a fast tokenizer (offsets)")."""

    @classmethod
    def check_engine(cls, engine: str, dtype: str, params: dict[str, Any]) -> None:
        """ONNX Runtime's package and dtype are checked here, before any worker loads."""
        if engine != "onnxruntime" or engine not in cls.engines:
            super().check_engine(engine, dtype, params)
            return
        from jobs.engine.onnxruntime.support import check_spec

        check_spec(dtype)

    def load(self, options: LoadOptions) -> Runner:
        tokenizer = load_tokenizer(options)
        if self.needs_fast_tokenizer and not tokenizer.is_fast:
            raise ModelLoadError(f"{options.model}: {self.needs_fast_tokenizer}")
        self.check_tokenizer(tokenizer, options)
        model, device = MODEL_LOADERS[options.engine](self.auto_class, options)
        return self.runner(model, tokenizer, device, options)

    def check_tokenizer(self, tokenizer: Any, options: LoadOptions) -> None:
        """Refuse (ModelLoadError) or adjust the tokenizer before the model loads; most tasks need nothing."""
        del tokenizer, options

    @abstractmethod
    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        """The task's runner for a loaded model (may refuse the model with ModelLoadError)."""

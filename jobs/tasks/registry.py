"""Task types by name. Entries are import paths so that looking up a task's
schema does not import torch; the module is imported on first use.

``ALIASES`` maps the transformers pipeline names to our task names; a spec may use
either, and is stored with ours."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jobs.errors import SpecError

if TYPE_CHECKING:
    from jobs.engine.base import TaskType

TASKS: dict[str, str] = {
    "tokenize": "jobs.tasks.tokenize:TokenizeTask",
    "ner": "jobs.tasks.ner:NerTask",
    "qa": "jobs.tasks.qa:QuestionAnsweringTask",
    "summarization": "jobs.tasks.summarization:SummarizationTask",
    "translation": "jobs.tasks.translation:TranslationTask",
    "classification": "jobs.tasks.classification:ClassificationTask",
    "zero_shot": "jobs.tasks.zero_shot:ZeroShotTask",
    "fill_mask": "jobs.tasks.fill_mask:FillMaskTask",
    "embeddings": "jobs.tasks.embeddings:EmbeddingsTask",
    "generation": "jobs.tasks.text_generation:TextGenerationTask",
}

ALIASES: dict[str, str] = {
    "token-classification": "ner",
    "question-answering": "qa",
    "text-classification": "classification",
    "sentiment-analysis": "classification",
    "zero-shot-classification": "zero_shot",
    "fill-mask": "fill_mask",
    "feature-extraction": "embeddings",
    "sentence-similarity": "embeddings",
    "text-generation": "generation",
}


def task_name(name: str) -> str:
    """Our name for ``name``, which may be a pipeline alias; ValueError listing the valid names."""
    canonical = ALIASES.get(name, name)
    if canonical not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} "
                         f"(or the pipeline names {', '.join(sorted(ALIASES))})")
    return canonical


def get_task_class(name: str) -> type[TaskType]:
    """Return the TaskType class registered as ``name`` (or under the pipeline alias ``name``)."""
    try:
        target = TASKS[task_name(name)]
    except ValueError as exc:
        raise SpecError("task", str(exc)) from None
    module_name, class_name = target.split(":")
    cls: type[TaskType] = getattr(importlib.import_module(module_name), class_name)
    return cls

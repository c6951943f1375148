"""Task types by name. Entries are import paths so that looking up a task's
schema does not import torch; the module is imported on first use."""

from __future__ import annotations

import importlib

from jobs.base import TaskType
from jobs.errors import SpecError

TASKS: dict[str, str] = {
    "tokenize": "jobs.tokenize:TokenizeTask",
    "ner": "jobs.ner:NerTask",
    "qa": "jobs.qa:QuestionAnsweringTask",
    "summarization": "jobs.summarization:SummarizationTask",
    "translation": "jobs.translation:TranslationTask",
}


def get_task_class(name: str) -> type[TaskType]:
    """Return the TaskType class registered as ``name``."""
    try:
        target = TASKS[name]
    except KeyError:
        valid = ", ".join(sorted(TASKS))
        raise SpecError("task", f"unknown task {name!r}; valid tasks: {valid}") from None
    module_name, class_name = target.split(":")
    cls: type[TaskType] = getattr(importlib.import_module(module_name), class_name)
    return cls

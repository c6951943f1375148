"""Tiny models built from configs, for the offline demo and the tests.

There is no model hub here (and often none on a user's CI), so the demo and the
tests build small, randomly initialised models from a config, with a tokenizer
trained by the ``tokenizers`` library on a small English corpus, save them with
``save_pretrained`` and load them back through the real loading code. Building is
seeded, so the same kind always gives the same weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path

BUILDERS: dict[str, str] = {
    "bert-ner": "jobs.testing.tiny.encoders:build_bert_ner",
    "bert-qa": "jobs.testing.tiny.encoders:build_bert_qa",
    "distilbert-qa": "jobs.testing.tiny.encoders:build_distilbert_qa",
    "bart": "jobs.testing.tiny.seq2seq:build_bart",
    "t5": "jobs.testing.tiny.seq2seq:build_t5",
    "marian": "jobs.testing.tiny.seq2seq:build_marian",
    "multilingual": "jobs.testing.tiny.seq2seq:build_multilingual",
    "bert-classifier": "jobs.testing.tiny.heads:build_bert_classifier",
    "bert-nli": "jobs.testing.tiny.heads:build_bert_nli",
    "bert-mlm": "jobs.testing.tiny.heads:build_bert_mlm",
    "bert-embeddings": "jobs.testing.tiny.heads:build_bert_embeddings",
    "gpt2": "jobs.testing.tiny.heads:build_gpt2",
}

COMPLETE_MARKER = ".tiny-model-complete"


def build_tiny_model(kind: str, directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny model ``kind`` into ``directory`` (skipped when already built)."""
    directory = Path(directory)
    if (directory / COMPLETE_MARKER).exists():
        return directory
    try:
        target = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown tiny model {kind!r}; valid: {', '.join(sorted(BUILDERS))}") from None
    module_name, function_name = target.split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory.mkdir(parents=True, exist_ok=True)
    builder(directory, seed=seed)
    (directory / COMPLETE_MARKER).write_text(kind + "\n")
    return directory

"""CTranslate2's entries in the conversion cache (:mod:`jobs.engine.conversion_cache`):
``BATCHFORMERS_CACHE_DIR/ctranslate2/``, one per model, pinned revision, compute type and
CTranslate2 version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.engine.conversion_cache import MANIFEST, converted, entry_directory, is_complete, pinned_model

__all__ = ["CACHE_SUBDIR", "CONVERSION_RECIPE", "MANIFEST", "ConversionKey", "conversion_key", "converted",
           "is_complete"]

CACHE_SUBDIR = "ctranslate2"
CONVERSION_RECIPE = "4"
"""Bumped when how batchformers converts changes, so older cache entries are not reused."""


@dataclass(frozen=True)
class ConversionKey:
    """What a converted model depends on; one cache entry per distinct key."""

    model: str
    revision: str
    compute_type: str
    ctranslate2: str
    recipe: str = CONVERSION_RECIPE

    def directory(self, root: Path) -> Path:
        return entry_directory(root, CACHE_SUBDIR, self, self.compute_type)

    def label(self) -> str:
        return f"CTranslate2 {self.compute_type}"


def conversion_key(model_name: str, model_config: Any, revision: str | None, compute: str) -> ConversionKey:
    """The key of a loaded model: a hub model by its resolved commit, a local one by its files' stamps."""
    import ctranslate2

    model, pinned = pinned_model(model_name, model_config, revision)
    return ConversionKey(model, pinned, compute, ctranslate2.__version__)

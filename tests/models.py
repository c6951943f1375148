"""Where the tests find their tiny models.

The models are committed under ``tests/fixtures/models/<kind>`` (built by
``python -m tests.fixtures.build_models``), so golden outputs made with
transformers 4.57 and our outputs made with 5.x come from identical weights and
vocabularies whatever library versions a machine has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).parent / "fixtures" / "models"


def tiny_model_path(kind: str) -> Path:
    """The committed tiny model ``kind``; fails with the command that builds it."""
    path = MODELS_DIR / kind
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"tiny model {kind!r} missing: run `python -m tests.fixtures.build_models {kind}`")
    return path


def rows_of(result: Any) -> list[dict[str, Any]]:
    """A runner's result as a list of row dicts, whether it returned rows or a ``pyarrow.Table``."""
    if hasattr(result, "to_pylist"):
        rows: list[dict[str, Any]] = result.to_pylist()
        return rows
    return list(result)


def close(got: Any, want: Any, tolerance: float = 1e-4) -> bool:
    """Equal, except that floats (scores) may differ by ``tolerance``, at any depth."""
    if isinstance(want, float) and isinstance(got, float):
        return abs(got - want) <= tolerance
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(close(got[key], want[key], tolerance) for key in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(close(g, w, tolerance) for g, w in zip(got, want, strict=True))
    return bool(got == want)

"""A worker process's first shard pays no first-call cost that a model load can pay instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOAD_THEN_LOOK = """
import sys
from jobs.engine.base import LoadOptions
from jobs.tasks.registry import get_task_class
before = "pandas" in sys.modules
get_task_class("ner").from_params({}).load(LoadOptions(model=sys.argv[1], device="cpu"))
print(before, "pandas" in sys.modules)
"""


def test_a_model_load_pays_pyarrows_first_list_conversion(ner_model: Path) -> None:
    """pyarrow imports pandas at its first array from a Python list (~0.5 s): with the load, not in a decode."""
    done = subprocess.run([sys.executable, "-c", LOAD_THEN_LOOK, str(ner_model)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    assert done.stdout.split()[-2:] == ["False", "True"]

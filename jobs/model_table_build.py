"""Write ``jobs/model_table.json`` from the installed transformers: ``python -m jobs.model_table_build``.

Run it after upgrading transformers; ``tests/producer/test_model_table.py`` builds the table again
and fails while the committed one differs. This module imports transformers (and torch); nothing
at runtime imports it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("model_table.json")


def mapping_names() -> list[str]:
    """The auto mappings some task type's ModelRequirement names."""
    from jobs.tasks.registry import TASKS, get_task_class

    names = {getattr(get_task_class(task).model_requirement, "mapping", None) for task in TASKS}
    return sorted(name for name in names if name)


def model_types() -> list[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return sorted(CONFIG_MAPPING_NAMES)


def encoder_decoder_types() -> list[str]:
    """Imports every config class (seconds): their ``is_encoder_decoder`` defaults."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return sorted(kind for kind in model_types() if getattr(CONFIG_MAPPING[kind], "is_encoder_decoder", False))


def head_classes() -> dict[str, dict[str, Any]]:
    from transformers.models.auto import modeling_auto

    return {name: dict(sorted(getattr(modeling_auto, name).items())) for name in mapping_names()}


def source(with_encoder_decoder: list[str] | None = None) -> str:
    """The table's text; ``with_encoder_decoder`` skips the slow part when it is known."""
    from transformers import __version__

    encoder_decoder = encoder_decoder_types() if with_encoder_decoder is None else with_encoder_decoder
    data = {"transformers_version": __version__, "model_types": model_types(),
            "encoder_decoder_types": sorted(encoder_decoder), "head_classes": head_classes()}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main() -> int:
    TABLE.write_text(source())
    print(f"wrote {TABLE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

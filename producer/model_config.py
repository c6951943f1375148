"""A model's config.json read as ``transformers.AutoConfig`` would, for the fields the submit check needs.

AutoConfig imports transformers and torch (seconds of every submit) to build a config object
of which the check reads five fields. Here they are read from the JSON, with the defaults
only the config classes know taken from :mod:`jobs.model_table`; a config is refused where
AutoConfig refuses it: not JSON, no or an unknown ``model_type``, custom code (``auto_map``)
without ``trust_remote_code``. A config with custom code the job trusts, where the operator allows it
(:func:`jobs.trust.remote_code`, checked by the caller), is read by AutoConfig itself: running that code
is what both asked for. ``tests/producer/test_model_config.py``
compares both readings.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from jobs.model_table import ENCODER_DECODER_TYPES, MODEL_TYPES, TRANSFORMERS_VERSION

DEFAULT_NUM_LABELS = 2  # transformers' PreTrainedConfig when a config names neither id2label nor num_labels


@dataclass(frozen=True)
class ModelConfig:
    """What the submit check reads of a model's config."""

    model_type: str
    architectures: tuple[str, ...] = ()
    auto_map: dict[str, Any] | None = None
    is_encoder_decoder: bool = False
    labels: tuple[str, ...] = ()  # id2label's names


@functools.cache
def table_is_current() -> bool:
    """The table was made from the transformers installed here. Another version may know other model
    types and heads: then transformers itself is asked (seconds, but the same answers as the workers')."""
    try:
        return metadata.version("transformers") == TRANSFORMERS_VERSION
    except metadata.PackageNotFoundError:
        return False


def read_config(config_file: Path, trust_remote_code: bool = False) -> ModelConfig:
    """The config at ``config_file``; ValueError saying why transformers would not load it."""
    if not table_is_current():
        return _from_auto_config(config_file, trust_remote_code)
    try:
        raw = json.loads(config_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file} is not a valid JSON file ({exc})") from None
    raw = raw if isinstance(raw, dict) else {}
    auto_map = raw.get("auto_map") or None
    model_type = raw.get("model_type")
    known = isinstance(model_type, str) and model_type in MODEL_TYPES
    if isinstance(auto_map, dict) and "AutoConfig" in auto_map:
        if trust_remote_code:
            return _from_auto_config(config_file, trust_remote_code=True, custom_code=True)
        if not known:
            raise ValueError(f"the model in {config_file.parent} contains custom code (auto_map) which must be run "
                             "to load it; set `trust_remote_code: true` in the job if you trust it (workers must "
                             "allow it too: BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE=1)")
    if model_type is None:
        raise ValueError(f"unrecognized model in {config_file.parent}: its config.json has no `model_type` key")
    if not known:
        raise ValueError(f"its model type `{model_type}` is not one transformers {TRANSFORMERS_VERSION} knows "
                         "(a checkpoint newer than this transformers? `pip install --upgrade transformers`)")
    encoder_decoder = raw.get("is_encoder_decoder", model_type in ENCODER_DECODER_TYPES)
    return ModelConfig(model_type=model_type, architectures=tuple(raw.get("architectures") or ()),
                       auto_map=auto_map, is_encoder_decoder=bool(encoder_decoder), labels=_labels(raw))


def _labels(raw: dict[str, Any]) -> tuple[str, ...]:
    """id2label's names as PreTrainedConfig resolves them: ``num_labels``, when given, wins."""
    id2label = raw.get("id2label")
    count = raw.get("num_labels")
    if isinstance(count, int) and (not isinstance(id2label, dict) or len(id2label) != count):
        return tuple(f"LABEL_{i}" for i in range(count))
    if isinstance(id2label, dict):
        return tuple(str(name) for name in id2label.values())
    return tuple(f"LABEL_{i}" for i in range(DEFAULT_NUM_LABELS))


def _from_auto_config(config_file: Path, trust_remote_code: bool, custom_code: bool = False) -> ModelConfig:
    """transformers' own reading: for custom code the job trusts (transformers runs it, and may refuse it),
    or when the table is not of the installed transformers."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(config_file.parent), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - whatever the model's own code raises
        raise ValueError(str(exc)) from None
    return ModelConfig(model_type=str(getattr(config, "model_type", "?")),
                       architectures=tuple(getattr(config, "architectures", None) or ()),
                       auto_map=getattr(config, "auto_map", None) or ({"AutoConfig": "?"} if custom_code else None),
                       is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
                       labels=tuple(str(v) for v in (getattr(config, "id2label", None) or {}).values()))

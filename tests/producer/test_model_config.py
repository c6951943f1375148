"""producer.model_config reads a config.json as transformers.AutoConfig does, without importing it.

Each case is a real config file read both ways: the fields the submit check uses must agree,
and a config AutoConfig refuses must be refused (the check reports it as ``cannot read the
config``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.model_config import ModelConfig, read_config
from tests.models import tiny_model_path

FIXTURES = ["bert-ner", "bert-qa", "distilbert-qa", "bart", "t5", "marian", "multilingual"]
CONFIGS: dict[str, dict[str, Any] | list[int]] = {
    "bare-bert": {"model_type": "bert"},
    "t5-said-not-encoder-decoder": {"model_type": "t5", "is_encoder_decoder": False},
    "bert-said-encoder-decoder": {"model_type": "bert", "is_encoder_decoder": True},
    "num-labels": {"model_type": "bert", "num_labels": 3},
    "num-labels-against-id2label": {"model_type": "bert", "num_labels": 3, "id2label": {"0": "a", "1": "b"}},
    "id2label": {"model_type": "roberta", "id2label": {"1": "B-PER", "0": "O"}, "architectures": ["X"]},
    "empty-id2label": {"model_type": "bert", "id2label": {}},
    "known-type-with-custom-code": {"model_type": "bert", "auto_map": {"AutoConfig": "conf.MyConfig"}},
    "custom-code-only": {"model_type": "mine", "auto_map": {"AutoConfig": "conf.MyConfig"}},
    "custom-code-no-type": {"auto_map": {"AutoConfig": "conf.MyConfig"}},
    "custom-model-not-config": {"model_type": "gpt2", "auto_map": {"AutoModel": "model.Mine"}},
    "unknown-type": {"model_type": "no-such-architecture"},
    "no-type": {"hidden_size": 8},
    "not-a-mapping": [1, 2],
    "encoder-decoder": {"model_type": "encoder-decoder"},
}


def _auto(directory: Path) -> ModelConfig | None:
    """AutoConfig's reading, None when it refuses the config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - any refusal
        return None
    return ModelConfig(model_type=config.model_type, architectures=tuple(getattr(config, "architectures", None) or ()),
                       auto_map=getattr(config, "auto_map", None) or None,
                       is_encoder_decoder=bool(config.is_encoder_decoder),
                       labels=tuple(str(v) for v in (config.id2label or {}).values()))


def _ours(directory: Path) -> ModelConfig | None:
    try:
        return read_config(directory / "config.json")
    except ValueError:
        return None


@pytest.mark.parametrize("kind", FIXTURES)
def test_the_fixture_models_read_alike(kind: str) -> None:
    directory = tiny_model_path(kind)
    assert _ours(directory) == _auto(directory) is not None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_configs_read_alike(name: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[name]))
    assert _ours(tmp_path) == _auto(tmp_path)


def test_broken_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert",')
    assert _auto(tmp_path) is None
    with pytest.raises(ValueError, match="not a valid JSON file"):
        read_config(tmp_path / "config.json")


def test_custom_code_says_how_to_allow_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["custom-code-only"]))
    with pytest.raises(ValueError, match="trust_remote_code: true"):
        read_config(tmp_path / "config.json")


def test_reading_imports_no_transformers(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["id2label"]))
    code = ("import sys; from pathlib import Path; from producer.model_config import read_config; "
            f"read_config(Path({str(tmp_path / 'config.json')!r})); "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["bare-bert", "t5-said-not-encoder-decoder", "num-labels", "unknown-type",
                                  "custom-code-only"])
def test_another_transformers_is_asked_itself(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is of one transformers version: under another, transformers' own reading decides."""
    from producer import model_config

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[name]))
    monkeypatch.setattr(model_config, "table_is_current", lambda: False)
    assert _ours(tmp_path) == _auto(tmp_path)


def test_the_table_is_of_the_installed_transformers() -> None:
    from producer.model_config import table_is_current

    assert table_is_current()  # else every submit imports transformers: regenerate jobs/model_table.py

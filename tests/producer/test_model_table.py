"""jobs.model_table is what the installed transformers knows: rebuilt here, it must be identical.

The submit check reads model types, encoder-decoder defaults and head classes from that
table instead of importing transformers; after a transformers upgrade this test fails until
``python -m jobs.model_table_build`` is run.
"""

from __future__ import annotations

import pytest

from jobs import model_table, model_table_build

REBUILD = "the table is stale: run `python -m jobs.model_table_build` and commit jobs/model_table.json"


def test_model_types_and_head_classes_are_transformers() -> None:
    from transformers import __version__

    assert __version__ == model_table.TRANSFORMERS_VERSION, REBUILD
    assert frozenset(model_table_build.model_types()) == model_table.MODEL_TYPES, REBUILD
    assert model_table_build.head_classes() == model_table.HEAD_CLASSES, REBUILD


def test_every_mapping_a_task_names_is_in_the_table() -> None:
    assert sorted(model_table.HEAD_CLASSES) == model_table_build.mapping_names()


@pytest.mark.slow  # imports all of transformers' ~800 config classes
def test_encoder_decoder_defaults_are_the_config_classes() -> None:
    assert frozenset(model_table_build.encoder_decoder_types()) == model_table.ENCODER_DECODER_TYPES, REBUILD


@pytest.mark.slow
def test_the_committed_file_is_what_the_build_writes() -> None:
    written = model_table_build.source(with_encoder_decoder=sorted(model_table.ENCODER_DECODER_TYPES))
    assert model_table_build.TABLE.read_text() == written, REBUILD

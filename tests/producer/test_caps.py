"""The operator's caps (``BATCHFORMERS_CAP_*``): a spec just over one is refused at submit, naming the field,
the cap and its setting, with nothing written or enqueued; one at the cap is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.errors import SpecError
from jobs.io.layout import MANIFEST_FILE
from jobs.settings import CAPS, Settings
from jobs.spec import load_spec
from producer.submit import prepare, submit
from tests.models import tiny_model_path
from tests.reliability import queued_messages, write_rows

ROWS = 20


def _spec(tmp_path: Path, output: str, **fields: Any) -> Any:
    raw = {"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(tmp_path / "in.parquet"),
           "columns": {"id": "id"}, "output": str(tmp_path / output), "shard_rows": 5, **fields}
    return load_spec(raw)


CASES = {  # cap -> (field, a spec with the value `value`)
    "max_new_tokens": ("params.max_new_tokens", lambda value: {"task": "generation", "params": {
        "max_new_tokens": value}, "model": str(tiny_model_path("gpt2"))}),
    "num_beams": ("params.num_beams", lambda value: {"task": "summarization", "params": {"num_beams": value},
                                                     "model": str(tiny_model_path("bart"))}),
    "num_return_sequences": ("params.num_return_sequences", lambda value: {
        "task": "generation", "params": {"num_return_sequences": value, "do_sample": True},
        "model": str(tiny_model_path("gpt2"))}),
    "max_retries": ("max_retries", lambda value: {"max_retries": value}),
    "shard_time_limit": ("shard_time_limit", lambda value: {"shard_time_limit": value}),
    "priority": ("priority", lambda value: {"priority": value}),
    "shards": ("shard_rows", lambda value: {"shard_rows": -(-ROWS // value)}),  # ROWS rows in `value` shards
}


@pytest.mark.parametrize("cap", list(CASES))
def test_each_cap_refuses_just_over_and_accepts_at(cap: str, tmp_path: Path) -> None:
    write_rows(tmp_path / "in.parquet", ROWS)
    field, spec_with = CASES[cap]
    limit = 4 if cap == "shards" else 3  # 20 rows: 4 shards of 5 rows; 5 shards of 4 rows is over
    settings = Settings(**{f"cap_{cap}": limit})
    with pytest.raises(SpecError) as refused:
        prepare(_spec(tmp_path, "over", **spec_with(limit + 1)), settings)
    assert refused.value.field == field
    assert f"BATCHFORMERS_CAP_{cap.upper()}" in str(refused.value) and f"{limit:g}" in str(refused.value)
    assert not (tmp_path / "over" / MANIFEST_FILE).exists()  # refused before anything is written
    manifest, _ = prepare(_spec(tmp_path, "at", **spec_with(limit)), settings)
    assert (tmp_path / "at" / MANIFEST_FILE).exists()
    if cap == "shards":
        assert len(manifest.shards) == limit


def test_caps_come_from_the_environment_and_have_finite_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert {cap: getattr(defaults, f"cap_{cap}") for cap in CAPS} == CAPS
    monkeypatch.setenv("BATCHFORMERS_CAP_SHARDS", "7")
    monkeypatch.setenv("batchformers_cap_num_beams", "2")
    assert (Settings().cap_shards, Settings().cap_num_beams) == (7, 2)


def test_a_job_of_too_many_shards_enqueues_nothing(tmp_path: Path, settings: Settings) -> None:
    """`shard_rows: 1` over a big input would make a message per row in a Redis that cannot evict them."""
    write_rows(tmp_path / "in.parquet", ROWS)
    capped = settings.model_copy(update={"cap_shards": ROWS - 1})
    with pytest.raises(SpecError, match=f"{ROWS} shards, more than the {ROWS - 1} a job may have "
                                        "\\(BATCHFORMERS_CAP_SHARDS\\); raise shard_rows"):
        submit(_spec(tmp_path, "out", shard_rows=1), capped)
    assert queued_messages(settings.broker_url, settings.queue) == []
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()
    assert submit(_spec(tmp_path, "out", shard_rows=1), settings.model_copy(update={"cap_shards": ROWS})).enqueued == ROWS

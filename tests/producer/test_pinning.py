"""Pinned models (issue 14): the manifest says what was loaded, and workers load exactly that.

A hub id is pinned to a commit (from the cache's refs when offline); a local directory to a
fingerprint of its files, and a directory edited after submit fails the job's shards at their
first attempt, naming the file that changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from jobs.errors import SpecError
from jobs.io.layout import OutputLayout
from jobs.pinning import HUB, LOCAL, ModelChanged, differences, pin_of, pinned_spec, verify_local
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.inspect import inspect_output
from producer.pin import resolve_pin
from producer.status import job_status
from producer.submit import prepare, submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import write_rows

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _local_model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path("bert-ner"), model)
    return model


def _spec(tmp_path: Path, model: str | Path, **fields: Any) -> Any:
    write_rows(tmp_path / "in.parquet", 10)
    return load_spec({"task": "tokenize", "model": str(model), "input": str(tmp_path / "in.parquet"),
                      "columns": {"id": "id"}, "output": str(tmp_path / "out"), "shard_rows": 5, **fields})


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache of this test's own, with the hub offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_model(cache: Path, repo: str, commit: str, revision: str = "main") -> None:
    """Lay ``repo`` out in the cache as ``hf download`` does: refs/<revision> -> snapshots/<commit>/files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / revision).write_text(commit)
    shutil.copytree(tiny_model_path("bert-ner"), folder / "snapshots" / commit)


def test_local_directory_is_pinned_by_its_files(tmp_path: Path) -> None:
    model = _local_model(tmp_path)
    pin = resolve_pin(_spec(tmp_path, model))
    assert pin.kind == LOCAL and pin.fingerprint and pin.revision is None
    assert set(pin.files) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert pin.files["model.safetensors"].size == (model / "model.safetensors").stat().st_size
    assert resolve_pin(_spec(tmp_path, model)) == pin  # the same files: the same pin
    assert differences(pin, model) == []


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: (m / "config.json").write_text((m / "config.json").read_text().replace("bert", "bert ", 1)),
     "config.json changed size"),
    (lambda m: (m / "tokenizer_config.json").write_text(
        json.dumps({**json.loads((m / "tokenizer_config.json").read_text()), "do_lower_case": "x"})[:301]
        .ljust(301)), "tokenizer_config.json changed"),
    (lambda m: (m / "model.safetensors").unlink(), "model.safetensors was removed"),
    (lambda m: (m / "pytorch_model.bin").write_bytes(b"0" * 10), "pytorch_model.bin was added"),
])
def test_what_changed_is_named(tmp_path: Path, edit: Any, expected: str) -> None:
    model = _local_model(tmp_path)
    pin = resolve_pin(_spec(tmp_path, model))
    edit(model)
    changes = differences(pin, model)
    assert len(changes) == 1 and changes[0].startswith(expected), changes
    with pytest.raises(ModelChanged) as caught:
        verify_local(pin)
    assert str(model) in str(caught.value) and expected in str(caught.value)


def test_a_safetensors_header_change_of_the_same_size_is_caught(tmp_path: Path) -> None:
    """A weight renamed in place (same file size) changes the header's hash."""
    model = _local_model(tmp_path)
    pin = resolve_pin(_spec(tmp_path, model))
    data = bytearray((model / "model.safetensors").read_bytes())
    at = data.index(b"classifier.weight")
    data[at : at + len("classifier")] = b"CLASSIFIER"
    (model / "model.safetensors").write_bytes(bytes(data))
    assert differences(pin, model) == [f"model.safetensors changed header hash ({pin.files['model.safetensors'].sha256[:12]}"
                                       f" -> {resolve_pin(_spec(tmp_path, model)).files['model.safetensors'].sha256[:12]})"]


def test_hub_id_offline_and_not_cached_names_the_switch_and_the_cache(offline_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        resolve_pin(_spec(tmp_path, "nobody-xyz/no-such-model"))
    assert "HF_HUB_OFFLINE" in str(caught.value) and str(offline_cache) in str(caught.value)


def test_hub_id_offline_is_pinned_from_the_cache_refs(offline_cache: Path, tmp_path: Path,
                                                      settings: Settings) -> None:
    """Offline, submit pins the commit that refs/main names, and a worker loads exactly that snapshot."""
    _cache_model(offline_cache, "someone/tiny-ner", COMMIT)
    spec = _spec(tmp_path, "someone/tiny-ner")
    manifest, _ = prepare(spec, settings)
    pin = pin_of(manifest)
    assert pin is not None and pin.kind == HUB and pin.revision == COMMIT and pin.requested is None
    assert pin_of(OutputLayout(spec.output).read_manifest()) == pin  # written to the output
    loaded = pinned_spec(spec, manifest)
    assert loaded.revision == COMMIT and loaded.load_options().revision == COMMIT
    from jobs.engine.loading import load_tokenizer

    assert load_tokenizer(loaded.load_options()).vocab_size > 0  # offline, from snapshots/<commit>

    _cache_model(offline_cache, "someone/other", COMMIT[::-1], revision="v2")
    assert resolve_pin(_spec(tmp_path, "someone/other", revision="v2")).revision == COMMIT[::-1]
    assert resolve_pin(_spec(tmp_path, "someone/other", revision=COMMIT)).revision == COMMIT  # a commit is one


def test_status_and_inspect_show_the_pin_and_a_resume_keeps_it(tmp_path: Path, settings: Settings) -> None:
    model = _local_model(tmp_path)
    spec = _spec(tmp_path, model)
    first = submit(spec, settings)
    manifest = OutputLayout(first.output).read_manifest()
    pin = pin_of(manifest)
    assert pin is not None
    assert pin.label() in job_status(first.output, settings).model
    assert inspect_output(first.output).pinned == pin.label() and inspect_output(first.output).model_pin == manifest.model_pin
    submit(spec, settings)  # a resume: same manifest, same pin
    assert OutputLayout(first.output).read_manifest().model_pin == manifest.model_pin
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    with pytest.raises(ModelChanged, match="config.json changed size"):  # a resume with another model is refused
        submit(spec, settings)


def test_a_local_model_edited_after_submit_fails_every_shard_at_once(tmp_path: Path, settings: Settings,
                                                                     start_workers: Any) -> None:
    model = _local_model(tmp_path)
    submission = submit(_spec(tmp_path, model, max_retries=3), settings)
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text().replace('"[UNK]"', '"[UNKNOWN]"'))
    start_workers(1)
    status = wait(submission.output, timeout=60)
    assert status.state == "failed" and status.failed == status.shards == 2, status
    failed = OutputLayout(submission.output).failed()
    assert all(record["attempts"] == 1 for record in failed.values()), failed  # no retries
    for record in failed.values():
        assert str(model) in record["error"] and "tokenizer.json changed size" in record["error"], record


@pytest.mark.parametrize("model", ["/no/such/model", "./not-here", "~/not-a-model-dir-xyz"])
def test_a_missing_directory_is_not_taken_for_a_hub_id(tmp_path: Path, model: str) -> None:
    with pytest.raises(SpecError, match="is not a model directory") as error:
        resolve_pin(_spec(tmp_path, model))
    assert "hub cannot be reached" not in str(error.value)

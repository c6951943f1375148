"""BATCHFORMERS_ALLOWED_ROOTS cannot be walked around: chained URLs, `..`, symlinks, other protocols, models.

fsspec opens a chained URL (``a::b``) by what its parts name, so ``ROOT/..::memory://`` opened the
root's parent while it looked, as a string, like a path under the root. Each location here is
refused by the settings check that submit and the workers both use, and at submit and on the
worker where they call it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jobs.errors import InputError, SpecError
from jobs.io.source_file import SourceFile
from jobs.io.sources import check_source
from jobs.settings import Settings
from producer.submit import prepare
from tests.models import MODELS_DIR, tiny_model_path
from tests.reliability import tokenize_spec, write_rows
from worker.runners import runner_for


@pytest.fixture
def root(tmp_path: Path) -> Path:
    allowed = tmp_path / "allowed"
    write_rows(allowed / "in.parquet", 5)
    write_rows(tmp_path / "elsewhere" / "in.parquet", 5)
    (allowed / "link").symlink_to(tmp_path / "elsewhere")
    return allowed


def _bypasses(root: Path) -> list[str]:
    return [f"{root}/..::memory://", f"{root}/link::memory://", f"{root}/out::memory://",
            f"simplecache::file://{root}/out", f"file://{root}/../elsewhere/out", f"file://{root}/link/out",
            f"{root}/link/out", f"memory://{root}/out", f"{root}-sibling/out"]


def test_every_bypass_is_outside_the_roots(root: Path) -> None:
    settings = Settings(allowed_roots=f"{root}, s3://bucket/data")
    for location in _bypasses(root):
        assert not settings.allows(location), location
    for location in ("s3://bucket/data/../other/x", "s3://bucket/database/x", "simplecache::s3://bucket/data/x",
                     "S3://bucket/data/x::memory://", "gs://bucket/data/x"):
        assert not settings.allows(location), location
    for location in (str(root / "in.parquet"), f"file://{root}/in.parquet", f"{root}/sub/../out",
                     "s3://bucket/data/x", "s3://bucket/data", "s3://bucket//data/./x"):
        assert settings.allows(location), location
    chained = Settings(allowed_roots="simplecache::s3://bucket/data")  # the operator allows this chain
    assert chained.allows("simplecache::s3://bucket/data/x")
    assert not chained.allows("simplecache::s3://bucket/data/../x") and not chained.allows("s3://bucket/data/x")


def test_submit_refuses_every_bypass_and_a_model_outside_the_roots(root: Path, tmp_path: Path) -> None:
    settings = Settings(allowed_roots=f"{root},{MODELS_DIR}")
    for output in _bypasses(root):
        with pytest.raises(SpecError, match="outside the allowed roots") as refused:
            prepare(tokenize_spec(root / "in.parquet", output), settings)
        assert refused.value.field == "output"
    for source in (f"{root}/..::memory://", f"{root}/link::memory://in.parquet", f"{root}/link/in.parquet"):
        with pytest.raises(SpecError, match="outside the allowed roots") as refused:
            prepare(tokenize_spec(source, root / "out"), settings)
        assert refused.value.field == "input"
    outside = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model_path("bert-ner"), outside)
    for model in (outside, root / "link" / "model"):
        with pytest.raises(SpecError, match="outside BATCHFORMERS_ALLOWED_ROOTS") as refused:
            prepare(tokenize_spec(root / "in.parquet", root / "out", model=str(model)), settings)
        assert refused.value.field == "model"
    manifest, _ = prepare(tokenize_spec(root / "in.parquet", root / "out"), settings)  # allowed: unchanged
    assert manifest.total_rows == 5


def test_the_worker_refuses_every_bypass(root: Path, tmp_path: Path) -> None:
    settings = Settings(allowed_roots=str(root))
    for location in _bypasses(root):
        with pytest.raises(InputError, match="outside BATCHFORMERS_ALLOWED_ROOTS"):
            check_source(SourceFile(location, "parquet", 5, 1, "x"), 0, 5, settings)
    spec = tokenize_spec(root / "in.parquet", root / "out", model=str(tiny_model_path("bert-ner")))
    with pytest.raises(SpecError, match="outside BATCHFORMERS_ALLOWED_ROOTS") as refused:
        runner_for(spec, settings)
    assert refused.value.field == "model"

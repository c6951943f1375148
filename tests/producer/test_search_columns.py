"""Column names come from a manifest (anyone who can write the output can write it): search quotes them
as identifiers, so a name is a name and never SQL."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from producer.search import SCORERS, nearest

NAMES = ['say "hi"', 'id", 42 AS "injected', "plain"]


def test_any_column_name_is_kept_as_it_is() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]
    part = pa.table({**{name: [f"{name}-{row}" for row in range(3)] for name in NAMES},
                     "embedding": pa.array(vectors, pa.list_(pa.float32(), 2)),
                     "error": pa.array([None, None, None], pa.string())})
    hits = nearest([part], np.array([1.0, 0.0], dtype=np.float32), NAMES, top_k=2,
                   scorer=SCORERS["duckdb"])  # the scorer that names the columns in its SQL
    assert hits.column_names == [*NAMES, "score"]
    assert hits.column(NAMES[1]).to_pylist() == [f"{NAMES[1]}-0", f"{NAMES[1]}-2"]

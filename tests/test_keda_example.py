"""The KEDA example (deploy/keda-scaledobject.yaml) is a valid ScaledObject that scales on our backlog gauge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.flower import QUEUE_MESSAGES

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "keda-scaledobject.yaml"
PROMETHEUS_METADATA = {"serverAddress", "query", "threshold"}  # what KEDA's Prometheus scaler requires


def test_scaled_object_matches_kedas_schema() -> None:
    keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1", reason="pip install cloudcoil-models-keda (test extra)")
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    scaled = keda.ScaledObject.model_validate(document)  # KEDA's CRD schema, as pydantic models
    # The models ignore unknown keys: a misspelt field would vanish, so the document must survive a round trip.
    assert scaled.model_dump(by_alias=True, exclude_unset=True, mode="json") == document
    triggers = document["spec"]["triggers"]
    assert [trigger["type"] for trigger in triggers] == ["prometheus"]
    metadata = triggers[0]["metadata"]
    assert set(metadata) >= PROMETHEUS_METADATA and all(isinstance(v, str) for v in metadata.values())
    assert QUEUE_MESSAGES in metadata["query"] and float(metadata["threshold"]) > 0
    assert document["spec"]["minReplicaCount"] == 0  # Flower serves the gauge with no worker running

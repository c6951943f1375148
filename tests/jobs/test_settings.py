"""Settings come from BATCHFORMERS_* variables, in any case; what the constructor is given wins."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.settings import Settings


def test_variables_fill_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFORMERS_QUEUE", "from-env")
    monkeypatch.setenv("batchformers_lease_seconds", "3.5")  # any case, parsed to the field's type
    monkeypatch.setenv("BATCHFORMERS_ROUTING", "0")
    monkeypatch.setenv("BATCHFORMERS_NOT_A_SETTING", "ignored")
    settings = Settings()
    assert (settings.queue, settings.lease_seconds, settings.routing) == ("from-env", 3.5, False)
    assert Settings(queue="given").queue == "given"
    assert settings.model_copy(update={"queue": "copied"}).queue == "copied"


def test_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFORMERS_METRICS_PORT", "eighty")
    with pytest.raises(ValidationError, match="metrics_port"):
        Settings()
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings(metrics_port=9100, lease_seconds=0)


def test_secrets_stay_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFORMERS_BROKER_URL", "redis://:hunter2@host:6379/0")
    assert "hunter2" not in repr(Settings()) and Settings().broker_url.endswith("@host:6379/0")

"""A worker process's thread settings, set after the fork (``worker.app._limit_threads``)."""

from __future__ import annotations

import os

import pytest

from worker.app import OMP_WAIT_POLICY, PASSIVE, _limit_threads


def test_openmp_threads_sleep_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spinning torch thread takes the core the tokenizer's threads need (issue 21)."""
    monkeypatch.delenv("BATCHFORMERS_TORCH_THREADS", raising=False)
    monkeypatch.delenv(OMP_WAIT_POLICY, raising=False)
    _limit_threads()
    assert os.environ[OMP_WAIT_POLICY] == PASSIVE


def test_an_explicit_wait_policy_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHFORMERS_TORCH_THREADS", raising=False)
    monkeypatch.setenv(OMP_WAIT_POLICY, "ACTIVE")
    _limit_threads()
    assert os.environ[OMP_WAIT_POLICY] == "ACTIVE"

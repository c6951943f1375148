"""Hub datasets, ``hf://datasets/NAME[@REVISION]``, loaded with ``datasets.load_dataset`` (:mod:`.loaded`)."""

from __future__ import annotations

from typing import Any

PREFIX = "hf://datasets/"


def hub_dataset(location: str) -> tuple[str, str | None] | None:
    """``hf://datasets/NAME[@REVISION]`` -> (NAME, REVISION); a path inside the repo is files, not a dataset."""
    if not location.startswith(PREFIX):
        return None
    repo, at, tail = location[len(PREFIX):].strip("/").partition("@")
    revision, _, inside = tail.partition("/")
    if not repo or inside or any(ch in repo for ch in "*?[") or len(repo.split("/")) > 2:
        return None
    return repo, (revision or None) if at else None


def loader_call(location: str, input_format: str) -> tuple[str, dict[str, Any]] | None:
    """``(path, arguments)`` for ``datasets.load_dataset`` when ``location`` is a hub dataset."""
    del input_format  # a hub dataset is one whatever the format says
    hub = hub_dataset(location)
    return (hub[0], {"revision": hub[1]}) if hub is not None else None

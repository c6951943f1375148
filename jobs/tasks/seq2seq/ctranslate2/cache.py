"""The conversion cache: one converted model per key, safe with many workers starting at once.

Each worker checks the cache, then takes a file lock, checks again, converts into a
temporary directory beside the cache entry and renames it into place. Every entry
carries a manifest of its files' sizes and SHA-256; an entry that does not match it (a
truncated or partial copy) is removed and converted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "batchformers-conversion.json"
"""Written last into every converted model: the key it was made for and its files' sizes and hashes."""
CACHE_SUBDIR = "ctranslate2"
_HASH_CHUNK = 1 << 20
CONVERSION_RECIPE = "4"
"""Bumped when how batchformers converts changes, so older cache entries are not reused."""


@dataclass(frozen=True)
class ConversionKey:
    """What a converted model depends on; one cache entry per distinct key."""

    model: str
    revision: str
    compute_type: str
    ctranslate2: str
    recipe: str = CONVERSION_RECIPE

    def directory(self, root: Path) -> Path:
        digest = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.model.strip("/"))[-60:]
        return root / CACHE_SUBDIR / f"{slug}-{self.compute_type}-{digest}"


def conversion_key(model_name: str, model_config: Any, revision: str | None, compute: str) -> ConversionKey:
    """The key of a loaded model: a hub model by its resolved commit, a local one by its files' stamps."""
    import ctranslate2

    path = Path(model_name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        stamp = hashlib.sha256(json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
                               .encode()).hexdigest()[:16]
        return ConversionKey(str(path.resolve()), f"local:{stamp}", compute, ctranslate2.__version__)
    pinned = getattr(model_config, "_commit_hash", None) or revision or "main"
    return ConversionKey(model_name, str(pinned), compute, ctranslate2.__version__)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, key: ConversionKey) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _file_digest(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"key": key.__dict__, "files": files}, indent=1, sort_keys=True))


def is_complete(directory: Path, key: ConversionKey) -> bool:
    """True when ``directory`` holds a whole conversion for ``key``: manifest present, every file as listed."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("key") != key.__dict__ or not manifest.get("files"):
        return False
    for name, expected in manifest["files"].items():
        path = directory / name
        try:
            if path.stat().st_size != expected["size"] or _file_digest(path) != expected["sha256"]:
                return False
        except OSError:
            return False
    return True


def converted(key: ConversionKey, root: Path, convert: Any) -> Path:
    """The cache entry for ``key``, converting it with ``convert(output_dir)`` when missing or broken.

    Many processes may call this at once: one converts (under a file lock, into a temporary
    directory renamed into place), the others wait for the lock and find the entry complete.
    """
    from filelock import FileLock

    final = key.directory(root)
    if is_complete(final, key):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_complete(final, key):
            return final
        if final.exists():
            log.warning("batchformers: conversion in %s is incomplete or corrupt; converting again", final)
            trash = final.with_name(f".{final.name}.broken-{uuid.uuid4().hex[:8]}")
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            started = time.perf_counter()
            output = staging / "model"
            convert(str(output))
            _write_manifest(output, key)
            output.rename(final)
            log.warning("batchformers: converted %s to CTranslate2 %s in %.1f s (%s)", key.model,
                        key.compute_type, time.perf_counter() - started, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final

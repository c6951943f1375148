"""The conversion cache the optional engines share: one converted model per key, safe with many
workers starting at once (CTranslate2's ``ctranslate2/``, ONNX Runtime's ``onnxruntime/``).

Each worker checks the cache, then takes a file lock, checks again, converts into a
temporary directory beside the cache entry and renames it into place. Every entry
carries a manifest of its files' sizes and SHA-256; an entry that does not match it (a
truncated or partial copy) is removed and converted again. An engine says only what its
key holds (:class:`CacheKey`) and how to convert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MANIFEST = "batchformers-conversion.json"
"""Written last into every converted model: the key it was made for and its files' sizes and hashes."""
_HASH_CHUNK = 1 << 20


class CacheKey(Protocol):
    """What a converted model depends on (a frozen dataclass); one cache entry per distinct key."""

    @property
    def model(self) -> str:
        """The model's id or resolved local path."""

    def directory(self, root: Path) -> Path:
        """The entry's directory under the cache root (``entry_directory``)."""

    def label(self) -> str:
        """How the log names the conversion ("CTranslate2 int8")."""


def entry_directory(root: Path, subdir: str, key: Any, tag: str) -> Path:
    """``root/subdir/<model slug>-<tag>-<digest of every field of key>``."""
    digest = hashlib.sha256(json.dumps(vars(key), sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in key.model.strip("/"))[-60:]
    return root / subdir / f"{slug}-{tag}-{digest}"


def pinned_model(model_name: str, model_config: Any, revision: str | None) -> tuple[str, str]:
    """(model, revision) a key names: a hub model by its resolved commit, a local one by its files' stamps
    (names, sizes, modification times), so a changed local model converts again."""
    path = Path(model_name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        stamp = hashlib.sha256(json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
                               .encode()).hexdigest()[:16]
        return str(path.resolve()), f"local:{stamp}"
    pinned = getattr(model_config, "_commit_hash", None) or revision or "main"
    return model_name, str(pinned)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, key: CacheKey) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _file_digest(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"key": vars(key), "files": files}, indent=1, sort_keys=True))


def is_complete(directory: Path, key: CacheKey) -> bool:
    """True when ``directory`` holds a whole conversion for ``key``: manifest present, every file as listed."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("key") != vars(key) or not manifest.get("files"):
        return False
    for name, expected in manifest["files"].items():
        path = directory / name
        try:
            if path.stat().st_size != expected["size"] or _file_digest(path) != expected["sha256"]:
                return False
        except OSError:
            return False
    return True


def converted(key: CacheKey, root: Path, convert: Callable[[str], Any]) -> Path:
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
            log.warning("batchformers: converted %s to %s in %.1f s (%s)", key.model, key.label(),
                        time.perf_counter() - started, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final

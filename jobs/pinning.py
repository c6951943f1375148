"""Pinned models: what a job's model resolved to at submit, so every shard loads exactly that.

A spec names a model by hub id (and maybe a branch or tag) or by local directory; both can
change under a job that runs for days or resumes a week later. At submit the producer
resolves it once (:func:`producer.pin.resolve_pin`) and stores the :class:`ModelPin` in the manifest:

- **hub id**: the commit hash of the revision asked for (``main`` when none), from the hub,
  or from the local cache's ``refs/`` when offline (``HF_HUB_OFFLINE``) or the hub cannot be
  reached (:mod:`producer.pin`). Workers load ``revision=<commit>`` (:func:`pinned_spec`).
- **local directory**: a fingerprint of its files: every name and size, the SHA-256 of each
  non-weight file (config, tokenizer, generation config ...) and of each safetensors header
  (names, shapes, dtypes and offsets of every tensor), without reading the weights.
  A worker checks it once per process per (model, pin) (:func:`verify_local`); a directory
  that changed fails the job's shards at once with :class:`ModelChanged`, naming the file.

Only the standard library is used here: workers check a pin without torch or the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import ModelLoadError

if TYPE_CHECKING:
    from jobs.spec import JobSpec

HUB = "hub"
LOCAL = "local"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".gguf")
"""Weight files other than safetensors: only their size is pinned (hashing gigabytes per check is too slow)."""
SAFETENSORS_SUFFIX = ".safetensors"
HASH_CHUNK = 1024 * 1024
HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header longer than this is not one (also for the submit check)


class ModelChanged(ModelLoadError):
    """Raised when a local model directory no longer matches the fingerprint pinned at submit."""


@dataclass(frozen=True)
class FileStamp:
    """One file of a local model: its size, and the SHA-256 of its contents (or of its safetensors header)."""

    size: int
    sha256: str | None = None  # None: a non-safetensors weight file, pinned by size only


@dataclass(frozen=True)
class ModelPin:
    """What ``model`` resolved to at submit."""

    model: str
    kind: str  # hub | local
    revision: str | None = None  # hub: the commit hash loaded
    requested: str | None = None  # hub: the revision the spec asked for (None: main)
    fingerprint: str | None = None  # local: SHA-256 over ``files``
    files: dict[str, FileStamp] = field(default_factory=dict)

    def label(self) -> str:
        """One line for ``status``, ``inspect`` and ``jobs``."""
        if self.kind == HUB:
            asked = f"{self.requested} = " if self.requested and self.requested != self.revision else ""
            return f"{self.model} @ {asked}{self.revision}"
        return f"{self.model} (local, fingerprint {str(self.fingerprint)[:12]}, {len(self.files)} files)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelPin:
        files = {name: FileStamp(**stamp) for name, stamp in (raw.get("files") or {}).items()}
        return cls(**{**raw, "files": files})


def pin_of(manifest: Any) -> ModelPin | None:
    """The manifest's pin; None for a job submitted before models were pinned."""
    raw = getattr(manifest, "model_pin", None)
    return ModelPin.from_dict(raw) if raw else None


# -- local directories ---------------------------------------------------------


def local_files(directory: Path) -> dict[str, FileStamp]:
    """Every (non-hidden) regular file under ``directory``, by relative name: size and hash."""
    found: dict[str, FileStamp] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_file():  # a FIFO or device would block the walk, or never end
                found[path.relative_to(directory).as_posix()] = stamp_of(path)
    return found


def stamp_of(path: Path) -> FileStamp:
    size = path.stat().st_size
    if path.suffix == SAFETENSORS_SUFFIX:
        return FileStamp(size, _sha256(_safetensors_header(path)))
    if path.suffix in WEIGHT_SUFFIXES:
        return FileStamp(size)
    return FileStamp(size, _file_sha256(path))


def fingerprint_of(files: dict[str, FileStamp]) -> str:
    payload = json.dumps({name: asdict(stamp) for name, stamp in files.items()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def differences(pin: ModelPin, directory: Path) -> list[str]:
    """What changed in ``directory`` since ``pin`` was taken, one phrase per file; empty when nothing did."""
    if not directory.is_dir():
        return [f"the directory {directory} is gone"]
    now = local_files(directory)
    changes = [f"{name} was removed" for name in sorted(set(pin.files) - set(now))]
    changes += [f"{name} was added" for name in sorted(set(now) - set(pin.files))]
    for name in sorted(set(pin.files) & set(now)):
        before, after = pin.files[name], now[name]
        if before.size != after.size:
            changes.append(f"{name} changed size ({before.size:,} -> {after.size:,} bytes)")
        elif before.sha256 != after.sha256:
            what = "header hash" if name.endswith(SAFETENSORS_SUFFIX) else "sha256"
            changes.append(f"{name} changed {what} ({str(before.sha256)[:12]} -> {str(after.sha256)[:12]})")
    return changes


_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


def verify_local(pin: ModelPin, once: bool = True) -> None:
    """ModelChanged unless the local model still matches ``pin``.

    ``once``: a match is remembered, so a worker checks once per process per (model, pin), not per shard.
    """
    key = (pin.model, str(pin.fingerprint))
    with _verified_lock:
        if once and key in _verified:
            return
        changes = differences(pin, Path(os.path.expanduser(pin.model)))
        if changes:  # not remembered: a model put back as it was passes the next check
            raise ModelChanged(
                f"the local model {pin.model} changed since the job was submitted: {'; '.join(changes)}. "
                "Put it back as it was, or submit the job again to a new output to use the model as it is now"
            )
        _verified.add(key)


def pinned_spec(spec: JobSpec, manifest: Any) -> JobSpec:
    """The spec a worker loads its model by: a hub model at the pinned commit; a local one checked first."""
    pin = pin_of(manifest)
    if pin is None:
        return spec
    if pin.kind == LOCAL:
        verify_local(pin)
        return spec
    return spec.model_copy(update={"revision": pin.revision})


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return prefix
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT:  # not a safetensors file after all: pin its first bytes
            return prefix
        return prefix + handle.read(length)


def _file_sha256(path: Path) -> str:
    """In chunks: a large tokenizer or vocabulary file is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Files on a local disk or in object storage, behind one small interface.

Local paths use the OS directly (rename is atomic there). URLs with a scheme
(``s3://``, ``gs://``, ``memory://`` ...) go through fsspec, where one object put
is atomic and a rename is not: the commit protocol therefore never relies on
rename for visibility there (see :mod:`jobs.io.layout`).

Credentials and endpoints come from each filesystem's own configuration, never
from the job spec: for ``s3://`` the standard ``AWS_*`` variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for MinIO/Ceph/moto, ``AWS_DEFAULT_REGION``)
or ``~/.aws``; for any fsspec filesystem, ``FSSPEC_<PROTOCOL>_<OPTION>`` variables
(e.g. ``FSSPEC_GCS_PROJECT``) or ``FSSPEC_<PROTOCOL>='{json}'``.

Object stores answer listings from a client-side cache (s3fs, gcsfs); every
existence check and listing here drops that cache first, because the files that
matter (commit markers) are written by other processes.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import fsspec


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class Storage:
    """A filesystem plus the root location everything else is relative to."""

    root: str
    fs: Any

    @classmethod
    def at(cls, location: str) -> Storage:
        if is_remote(location):
            fs, root = fsspec.core.url_to_fs(location)
            return cls(root=root.rstrip("/"), fs=fs)
        root = os.path.abspath(os.path.expanduser(location.removeprefix("file://")))
        return cls(root=root, fs=fsspec.filesystem("file"))

    @property
    def remote(self) -> bool:
        return "file" not in _protocols(self.fs)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """Location readable by other tools (``s3://bucket/key`` or an absolute path)."""
        path = self.path(*parts)
        if not self.remote:
            return path
        return f"{_protocols(self.fs)[0]}://{path}"

    def exists(self, *parts: str) -> bool:
        target = self.path(*parts)
        self._forget(target)
        return bool(self.fs.exists(target))

    def read_bytes(self, *parts: str) -> bytes:
        data: bytes = self.fs.cat_file(self.path(*parts))
        return data

    def open(self, *parts: str, mode: str = "rb") -> IO[Any]:
        handle: IO[Any] = self.fs.open(self.path(*parts), mode)
        return handle

    def open_ranges(self, path: str) -> Any:
        """``path`` opened for reads at scattered offsets (Parquet row groups, IPC record batches):
        memory-mapped on a local disk; on object storage without read-ahead, so that a reader that
        seeks fetches what it asks for and no more (fsspec's default read-ahead fetches blocks of
        up to 50 MB: a shard of a large file downloaded most of it)."""
        if not self.remote:
            import pyarrow as pa

            return pa.memory_map(path)
        return self.fs.open(path, "rb", cache_type="none")

    def list(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a folder; empty when it does not exist."""
        folder = self.path(*parts)
        self._forget(folder)
        if not self.fs.exists(folder):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(folder, detail=False))

    def makedirs(self, *parts: str) -> None:
        if not self.remote:
            os.makedirs(self.path(*parts), exist_ok=True)

    def write_atomic(self, data: bytes, *parts: str, before_publish: Callable[[], None] | None = None) -> None:
        """Readers see the old object or the whole new one, never a part of it.

        On a local disk the data goes to a hidden temporary file (``.NAME.<hex>.tmp``, see
        :meth:`remove_temporaries`) that is then renamed; ``before_publish`` (a test fault
        point) runs once the data is written and before anyone can see it.
        """
        target = self.path(*parts)
        if self.remote:
            if before_publish is not None:
                before_publish()
            self.fs.pipe_file(target, data)
            return
        folder, name = posixpath.split(target)
        os.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        _write_synced(temporary, data)
        if before_publish is not None:
            before_publish()
        os.replace(temporary, target)

    def remove_temporaries(self, *parts: str) -> builtins.list[str]:
        """Delete the temporary files :meth:`write_atomic` left for ``parts`` (a writer killed
        before its rename); returns their names. Only for a writer that owns the name, as a
        shard's lease holder owns its part: another writer's temporary is not told apart."""
        if self.remote:
            return []  # object puts leave no temporaries
        folder, name = posixpath.split(self.path(*parts))
        if not os.path.isdir(folder):
            return []
        stale = sorted(entry for entry in os.listdir(folder)
                       if entry.startswith(f".{name}.") and entry.endswith(".tmp"))
        for entry in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(posixpath.join(folder, entry))
        return stale

    def create_once(self, data: bytes, *parts: str) -> bool:
        """Write only when absent; True for the one caller that created it.

        Readers see nothing or the whole file: locally the bytes go to a hidden temporary file,
        fsynced, then hard-linked into place (a link fails when the name exists); on S3 a
        conditional put. Other object stores check, then put: two writers within a request of
        each other may both succeed there."""
        target = self.path(*parts)
        if self.remote:
            if _exclusive_put(self.fs):
                try:
                    self.fs.pipe_file(target, data, mode="create")  # a conditional put (If-None-Match)
                    return True
                except FileExistsError:
                    return False
                except OSError:  # a store without conditional puts: fall through to check-then-put
                    pass
            if self.exists(*parts):  # a small race there (see above)
                return False
            self.fs.pipe_file(target, data)
            return True
        folder, name = posixpath.split(target)
        os.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        _write_synced(temporary, data)  # whole and on disk before anyone can see it
        try:
            os.link(temporary, target)  # fails when the target exists: create-once, never a half file
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then the bytes
            try:
                _write_synced(target, data, mode="xb")
            except FileExistsError:
                return False
        finally:
            os.remove(temporary)
        _fsync(folder)
        return True

    def sync(self, *parts: str) -> None:
        """Make a local file's bytes and its name durable (fsync of the file and of its folder): a
        power loss then keeps it whole. Object stores need nothing: a put is durable once it returns."""
        if self.remote:
            return
        target = self.path(*parts)
        _fsync(target)
        _fsync(posixpath.dirname(target))

    def sync_folder(self, *parts: str) -> None:
        """Make the renames and deletions in a local folder durable; nothing on object stores."""
        if not self.remote:
            _fsync(self.path(*parts))

    def remove(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts))

    def _forget(self, path: str) -> None:
        """Drop cached listings of ``path`` (and its parent) so that other writers' files show."""
        if self.remote:
            self.fs.invalidate_cache(path)


def _write_synced(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exclusive_put(fs: Any) -> bool:
    """Whether ``fs.pipe_file`` can refuse to overwrite (``mode="create"``, s3fs >= 2024.12)."""
    method = getattr(fs, "_pipe_file", None) or fs.pipe_file
    return "mode" in inspect.signature(method).parameters and "s3" in _protocols(fs)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)

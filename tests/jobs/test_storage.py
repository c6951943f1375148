"""Storage on a local disk and on an fsspec object store (``memory://``), without any server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from jobs.io.storage import Storage, _exclusive_put, _protocols, is_remote


@pytest.fixture
def remote() -> Storage:
    storage = Storage.at(f"memory://bf-{uuid.uuid4().hex[:8]}/job")
    yield storage
    storage.fs.rm(storage.root, recursive=True) if storage.fs.exists(storage.root) else None


def test_is_remote() -> None:
    assert is_remote("s3://b/k") and is_remote("memory://x")
    assert not is_remote("/data/x") and not is_remote("file:///data/x") and not is_remote("rel/x")


def test_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage.at(f"file://{tmp_path}/out/")
    assert storage.root == f"{tmp_path}/out" and not storage.remote
    assert storage.path("a", "b.json") == f"{tmp_path}/out/a/b.json"
    assert storage.url("a.json") == f"{tmp_path}/out/a.json"
    monkeypatch.chdir(tmp_path)
    assert Storage.at("rel").root == f"{tmp_path}/rel"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Storage.at("~/h").root == f"{tmp_path}/h"


def test_local_write_read_list_remove(tmp_path: Path) -> None:
    storage = Storage.at(str(tmp_path / "out"))
    assert storage.list() == [] and storage.list("nope") == []
    storage.write_atomic(b"one", "d", "a.json")
    storage.write_atomic(b"two", "d", "b.json")
    storage.write_atomic(b"uno", "d", "a.json")  # replaced whole
    assert storage.read_bytes("d", "a.json") == b"uno"
    assert storage.list("d") == ["a.json", "b.json"]  # no temporary left behind
    assert storage.exists("d", "a.json") and not storage.exists("d", "c.json")
    with storage.open("d", "b.json") as handle:
        assert handle.read() == b"two"
    with storage.open("d", "c.bin", mode="wb") as handle:  # how compact writes its merged file
        handle.write(b"three")
    assert storage.read_bytes("d", "c.bin") == b"three"
    storage.remove("d", "c.bin")
    storage.remove("d", "a.json")
    storage.remove("d", "a.json")  # already gone: nothing to do
    assert storage.list("d") == ["b.json"]
    storage.makedirs("e", "f")
    storage.makedirs("e", "f")  # already there: fine
    assert (tmp_path / "out" / "e" / "f").is_dir()


def test_local_write_is_invisible_until_published(tmp_path: Path) -> None:
    storage = Storage.at(str(tmp_path))
    storage.write_atomic(b"old", "x.bin")
    seen: list[tuple[bytes, list[str], bytes]] = []

    def look() -> None:
        names = sorted(os.listdir(tmp_path))
        seen.append(((tmp_path / "x.bin").read_bytes(), names, (tmp_path / names[0]).read_bytes()))

    storage.write_atomic(b"new", "x.bin", before_publish=look)
    (old, names, hidden), = seen
    assert old == b"old" and len(names) == 2 and names[0].startswith(".x.bin.") and names[0].endswith(".tmp")
    assert hidden == b"new"  # whole, under a hidden name
    assert sorted(os.listdir(tmp_path)) == ["x.bin"] and storage.read_bytes("x.bin") == b"new"


def test_remove_temporaries(tmp_path: Path) -> None:
    storage = Storage.at(str(tmp_path))
    assert storage.remove_temporaries("nowhere", "x.bin") == []
    for name in (".x.bin.1.tmp", ".x.bin.2.tmp", ".x.bin2.3.tmp", ".x.bin.4", "x.bin.5.tmp", "x.bin"):
        (tmp_path / name).write_bytes(b"")
    assert storage.remove_temporaries("x.bin") == [".x.bin.1.tmp", ".x.bin.2.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".x.bin.4", ".x.bin2.3.tmp", "x.bin", "x.bin.5.tmp"]


def test_a_temporary_removed_meanwhile_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the listing and the delete another cleaner (a rerun of the same shard) may remove one."""
    storage = Storage.at(str(tmp_path))
    for name in (".x.bin.1.tmp", ".x.bin.2.tmp"):
        (tmp_path / name).write_bytes(b"")
    remove = os.remove

    def raced(path: str) -> None:
        if path.endswith(".1.tmp"):
            remove(path)  # the other cleaner got there first
            raise FileNotFoundError(path)
        remove(path)

    monkeypatch.setattr(os, "remove", raced)
    assert storage.remove_temporaries("x.bin") == [".x.bin.1.tmp", ".x.bin.2.tmp"]
    assert os.listdir(tmp_path) == []


def test_local_create_once(tmp_path: Path) -> None:
    storage = Storage.at(str(tmp_path / "out"))
    assert storage.create_once(b"first", "m", "_SUCCESS") is True
    assert storage.create_once(b"second", "m", "_SUCCESS") is False
    assert storage.read_bytes("m", "_SUCCESS") == b"first"


def test_create_once_never_shows_a_partial_file(tmp_path: Path) -> None:
    """A writer killed while it creates a file leaves nothing or the whole file, never a short one
    (an empty _SUCCESS read as complete, then failed to parse). The writer, a real process, is
    killed (SIGKILL) the moment the name appears."""
    import signal
    import subprocess
    import sys

    size = 256 * 2**20
    target = tmp_path / "out" / "_SUCCESS"
    code = ("import sys; from jobs.io.storage import Storage; "
            f"Storage.at(sys.argv[1]).create_once(b'x' * {size}, '_SUCCESS')")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")])
    try:
        while not target.exists() and writer.poll() is None:
            pass
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait()
    assert target.exists()
    assert target.stat().st_size == size


def test_remote_root(remote: Storage) -> None:
    again = Storage.at(f"memory://{remote.root.strip('/')}/")  # a trailing slash changes nothing
    assert again.root == remote.root and not again.root.endswith("/") and again.root.endswith("/job")
    assert again.url("x") == remote.url("x")


def test_remote_store(remote: Storage) -> None:
    assert remote.remote and remote.url("a", "b.json") == f"memory://{remote.root}/a/b.json"
    assert remote.list() == []
    called: list[bool] = []
    remote.write_atomic(b"v1", "d", "a.json", before_publish=lambda: called.append(remote.exists("d", "a.json")))
    assert called == [False]  # the fault point comes before the put
    remote.write_atomic(b"v2", "d", "b.json")
    assert remote.read_bytes("d", "a.json") == b"v1" and remote.list("d") == ["a.json", "b.json"]
    assert remote.remove_temporaries("d", "a.json") == []  # object puts leave none
    # Another process writes behind the back of this client: it shows.
    remote.fs.pipe_file(remote.path("d", "c.json"), b"v3")
    assert remote.list("d") == ["a.json", "b.json", "c.json"] and remote.exists("d", "c.json")
    remote.remove("d", "c.json")
    assert not remote.exists("d", "c.json")
    remote.makedirs("x")  # no folders on object stores: a no-op
    assert remote.create_once(b"first", "_SUCCESS") is True
    assert remote.create_once(b"second", "_SUCCESS") is False
    assert remote.read_bytes("_SUCCESS") == b"first"


def test_cached_listings_are_dropped(remote: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    forgotten: list[str] = []
    monkeypatch.setattr(remote.fs, "invalidate_cache", forgotten.append)
    remote.exists("d", "x")
    remote.list("d")
    assert forgotten == [remote.path("d", "x"), remote.path("d")]


def test_exclusive_put_only_on_s3() -> None:
    class Fs:
        def __init__(self, protocol: object) -> None:
            self.protocol = protocol

        def _pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None: ...

    class Old(Fs):
        def _pipe_file(self, path: str, data: bytes) -> None: ...  # type: ignore[override]

    assert _exclusive_put(Fs(("s3", "s3a"))) and not _exclusive_put(Fs("gcs")) and not _exclusive_put(Old("s3"))
    assert _protocols(Fs("s3")) == ("s3",) and _protocols(Fs(("s3", "s3a"))) == ("s3", "s3a")

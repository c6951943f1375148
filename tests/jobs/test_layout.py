"""The output layout and its commit protocol, on a temporary directory: crashes at every commit
point, stale temporaries, markers, _SUCCESS, and the whole protocol as a hypothesis state machine."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from jobs.errors import OutputError
from jobs.io.layout import (
    CANCELLED_FILE,
    COMMIT_POINTS,
    MANIFEST_FILE,
    PART_PUBLISHED,
    PART_WRITTEN,
    SHARDS_DIR,
    SUCCESS_FILE,
    OutputLayout,
    is_data_file,
    marker_name,
    part_name,
)


class Crash(Exception):
    """Stands in for a SIGKILL at a commit point: nothing after it runs."""


def crash_at(point: str) -> Any:
    def fault(shard: int, reached: str) -> None:
        if reached == point:
            raise Crash(f"shard {shard} at {point}")

    return fault


def table_of(rows: int, tag: int = 0) -> pa.Table:
    return pa.table({"row_index": list(range(rows)), "tag": [tag] * rows})


def summary_of(rows: int) -> dict[str, Any]:
    return {"rows": rows, "errors": 0, "seconds": 0.1}


def visible_parts(root: Path) -> list[str]:
    """What a Parquet reader of the directory takes as data."""
    return sorted(path.name for path in root.iterdir() if path.is_file() and is_data_file(path.name))


def all_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_names() -> None:
    assert part_name(7) == "part-00007.parquet" and marker_name(7) == "00007.json"
    assert is_data_file("part-00001.parquet")
    assert not is_data_file(".part-00001.parquet.abc.tmp") and not is_data_file("_x.parquet")
    assert not is_data_file("part-00001.parquet.tmp") and not is_data_file("00001.json")
    assert not is_data_file(".part-00001.parquet")


def test_commit_publishes_part_then_marker(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    seen: list[tuple[int, str, list[str]]] = []
    layout.commit(3, table_of(4), summary_of(4),
                  fault=lambda shard, point: seen.append((shard, point, all_files(tmp_path))))
    assert [(shard, point) for shard, point, _ in seen] == [(3, PART_WRITTEN), (3, PART_PUBLISHED)]
    written, published = seen[0][2], seen[1][2]
    assert len(written) == 1 and written[0].startswith(".part-00003.parquet.") and written[0].endswith(".tmp")
    assert published == ["part-00003.parquet"]  # visible, and still no marker
    assert all_files(tmp_path) == [f"{SHARDS_DIR}/00003.json", "part-00003.parquet"]
    marker = layout.committed()[3]
    assert (marker["rows"], marker["shard"], marker["part"]) == (4, 3, "part-00003.parquet")
    assert abs(marker["committed_at"] - time.time()) < 60 and marker["worker"] == socket.gethostname()
    assert pq.read_metadata(tmp_path / "part-00003.parquet").row_group(0).column(0).compression == "ZSTD"
    assert layout.location == str(tmp_path)
    assert layout.is_committed(3) and not layout.is_committed(2)
    assert pq.read_table(tmp_path / "part-00003.parquet").equals(table_of(4))


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_a_crash_inside_the_commit_then_a_rerun(tmp_path: Path, point: str) -> None:
    layout = OutputLayout(str(tmp_path))
    layout.commit(1, table_of(2, tag=1), summary_of(2))  # a neighbour, whose files must survive
    with pytest.raises(Crash):
        layout.commit(0, table_of(5), summary_of(5), fault=crash_at(point))
    assert not layout.is_committed(0) and set(layout.committed()) == {1}
    assert visible_parts(tmp_path) == (["part-00000.parquet"] if point == PART_PUBLISHED else []) + [
        "part-00001.parquet"]
    layout.commit(0, table_of(5), summary_of(5))  # the shard runs again
    assert all_files(tmp_path) == [f"{SHARDS_DIR}/00000.json", f"{SHARDS_DIR}/00001.json",
                                   "part-00000.parquet", "part-00001.parquet"]
    assert set(layout.committed()) == {0, 1}
    read = ds.dataset(str(tmp_path), format="parquet").to_table()
    assert sorted(read.column("tag").to_pylist()) == [0] * 5 + [1] * 2


def test_recommit_deletes_only_its_own_temporaries(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    (tmp_path / SHARDS_DIR).mkdir(parents=True)
    mine = [tmp_path / ".part-00001.parquet.dead.tmp", tmp_path / SHARDS_DIR / ".00001.json.dead.tmp"]
    others = [tmp_path / ".part-00010.parquet.live.tmp", tmp_path / ".part-00001.parquet.x",
              tmp_path / SHARDS_DIR / ".00010.json.live.tmp"]
    for path in mine + others:
        path.write_bytes(b"half")
    assert layout.committed() == {}  # a marker's temporary is never counted
    layout.commit(1, table_of(1), summary_of(1))
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in others)


def test_failed_markers(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    layout.mark_failed(2, "boom", attempts=4)
    layout.mark_failed(5, "bang", attempts=1)
    failed = layout.failed()
    assert set(failed) == {2, 5} and failed[2]["error"] == "boom" and failed[2]["attempts"] == 4
    assert abs(failed[2]["failed_at"] - time.time()) < 60 and failed[2]["worker"] == socket.gethostname()
    assert failed[2]["shard"] == 2 and layout.committed() == {}
    layout.clear_failed(5)
    assert set(layout.failed()) == {2}
    layout.clear_failed(5)  # clearing what is not there is fine
    layout.commit(2, table_of(1), summary_of(1))  # a retried shard that succeeds is no longer failed
    assert layout.failed() == {} and set(layout.committed()) == {2}


@pytest.mark.parametrize("where", ["local", "remote"])
def test_markers_by_number(tmp_path: Path, where: str) -> None:
    """What status reads: marker numbers from one listing (no marker read), then the markers of given
    shards, one at a time on a local disk and from a thread pool on a remote store (memory:// here)."""
    location = str(tmp_path / "out") if where == "local" else f"memory://bf-markers-{uuid.uuid4().hex}/out"
    layout = OutputLayout(location)
    assert layout.marker_numbers() == (set(), set()) and layout.read_committed([0, 1]) == {}
    layout.commit(0, table_of(2), summary_of(2))
    layout.commit(12, table_of(1), summary_of(1))
    layout.mark_failed(3, "boom", attempts=2)
    for junk in (".00004.json.dead.tmp", "notes.json", "00005.json.bak", "007a.json"):  # never a marker
        layout.storage.write_atomic(b"{}", SHARDS_DIR, junk)
    layout.storage.write_atomic(b"{not json", SHARDS_DIR, "00006.txt")
    assert layout.marker_numbers() == ({0, 12}, {3})
    committed = layout.read_committed([0, 3, 12, 99], threads=3)
    assert sorted(committed) == [0, 12] and committed[12]["rows"] == 1 and committed[0]["part"] == "part-00000.parquet"
    assert list(layout.read_committed([12])) == [12]  # one shard: read inline
    failed = layout.read_failed([0, 3, 12])
    assert list(failed) == [3] and failed[3]["error"] == "boom" and failed[3]["attempts"] == 2


def test_success_cancel_and_manifest(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    assert not layout.holds_other_data() and not layout.has_manifest()
    with pytest.raises(OutputError, match="holds no batchformers job"):
        layout.read_manifest()
    assert layout.completion() is None and not layout.is_complete()
    assert layout.mark_complete({"rows": 3}) is True
    assert layout.mark_complete({"rows": 4}) is False
    assert layout.completion() == {"rows": 3} and layout.is_complete()
    assert (tmp_path / "out" / SUCCESS_FILE).exists()
    assert not layout.is_cancelled()
    layout.cancel()
    assert layout.is_cancelled()
    assert abs(json.loads((tmp_path / "out" / CANCELLED_FILE).read_text())["cancelled_at"] - time.time()) < 60
    layout.uncancel()
    assert not layout.is_cancelled()
    layout.uncancel()
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    assert OutputLayout(str(other)).holds_other_data()
    (other / MANIFEST_FILE).parent.mkdir()
    (other / MANIFEST_FILE).write_text("{}")
    assert OutputLayout(str(other)).has_manifest() and not OutputLayout(str(other)).holds_other_data()


def test_manifest_round_trip(tmp_path: Path) -> None:
    from producer.submit import prepare
    from tests.reliability import tokenize_spec, write_rows

    write_rows(tmp_path / "in.parquet", 7)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"))
    again = OutputLayout(str(tmp_path / "out")).read_manifest()
    assert again.job_id == manifest.job_id and again.total_rows == 7 and len(again.shards) == 2
    assert not layout.holds_other_data()


# -- the protocol as a state machine ---------------------------------------------------------

SHARDS = st.integers(min_value=0, max_value=3)


class CommitProtocol(RuleBasedStateMachine):
    """Commits that crash at any point, reruns, failures, retries, cancel and _SUCCESS, in any order.

    The model is what must be true: a shard is committed exactly when its last commit got past
    its marker, a reader sees one part per committed shard (plus, at most, the part of a shard
    that crashed after publishing it) and never a temporary, and _SUCCESS is written once."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="bf-layout-"))
        self.layout = OutputLayout(str(self.root))
        self.committed: dict[int, int] = {}  # shard -> tag of the committed table
        self.published: dict[int, int] = {}  # shard -> tag of a visible part without a marker
        self.failed: set[int] = set()
        self.temporaries: set[int] = set()  # shards whose last commit died with its part in a temporary
        self.success: dict[str, Any] | None = None
        self.tags = 0

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(shard=SHARDS, rows=st.integers(min_value=0, max_value=5))
    def commit(self, shard: int, rows: int) -> None:
        self.tags += 1
        self.layout.commit(shard, table_of(rows, self.tags), summary_of(rows))
        self.committed[shard] = self.tags
        self.published.pop(shard, None)
        self.failed.discard(shard)
        self.temporaries.discard(shard)

    @rule(shard=SHARDS, point=st.sampled_from(COMMIT_POINTS))
    def crash_inside_commit(self, shard: int, point: str) -> None:
        self.tags += 1
        with pytest.raises(Crash):
            self.layout.commit(shard, table_of(2, self.tags), summary_of(2), fault=crash_at(point))
        if point == PART_WRITTEN:
            self.temporaries.add(shard)
        else:
            self.temporaries.discard(shard)
        if point == PART_PUBLISHED:
            if shard in self.committed:  # the part was replaced under an existing marker
                self.committed[shard] = self.tags
            else:
                self.published[shard] = self.tags

    @rule(shard=SHARDS)
    def fail(self, shard: int) -> None:
        self.layout.mark_failed(shard, "boom", attempts=2)
        self.failed.add(shard)

    @rule(shard=SHARDS)
    def clear_failed(self, shard: int) -> None:
        self.layout.clear_failed(shard)
        self.failed.discard(shard)

    @rule(rows=st.integers(min_value=0, max_value=100))
    def complete(self, rows: int) -> None:
        wrote = self.layout.mark_complete({"rows": rows})
        assert wrote is (self.success is None)
        if wrote:
            self.success = {"rows": rows}

    @rule()
    def cancel_and_resume(self) -> None:
        self.layout.cancel()
        assert self.layout.is_cancelled()
        self.layout.uncancel()

    @invariant()
    def markers_match(self) -> None:
        assert set(self.layout.committed()) == set(self.committed)
        assert set(self.layout.failed()) == self.failed
        assert self.layout.marker_numbers() == (set(self.committed), self.failed)
        assert set(self.layout.read_committed(range(4))) == set(self.committed)
        assert set(self.layout.read_failed(range(4))) == self.failed
        assert all(self.layout.is_committed(shard) is (shard in self.committed) for shard in range(4))

    @invariant()
    def readers_see_whole_parts_only(self) -> None:
        if not self.root.exists():
            return
        expected = {shard: tag for shard, tag in {**self.published, **self.committed}.items()}
        assert visible_parts(self.root) == sorted(part_name(shard) for shard in expected)
        for shard, tag in expected.items():
            table = pq.read_table(io.BytesIO((self.root / part_name(shard)).read_bytes()))
            assert set(table.column("tag").to_pylist()) <= {tag}
        for shard in self.committed:  # a marker always describes the part next to it
            marker = json.loads((self.root / SHARDS_DIR / marker_name(shard)).read_text())
            assert marker["part"] == part_name(shard)

    @invariant()
    def temporaries_only_of_crashed_writes(self) -> None:
        if not self.root.exists():
            return
        left = {int(path.name[len(".part-"):][:5]) for path in self.root.glob(".part-*.tmp")}
        assert left == self.temporaries
        assert not list(self.root.glob(f"{SHARDS_DIR}/.*.tmp"))

    @invariant()
    def success_once(self) -> None:
        assert self.layout.completion() == self.success


TestCommitProtocol = CommitProtocol.TestCase
TestCommitProtocol.settings = settings(max_examples=30, stateful_step_count=20, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])

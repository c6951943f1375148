"""Two submits of different jobs to one fresh output at the same moment: the manifest is created once, so
exactly one job gets the output, the other is refused with a clear error and nothing of it is enqueued."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from producer.submit import Submission, submit
from tests.reliability import queued_messages, tokenize_spec, write_rows

ROUNDS = 4


@dataclass(frozen=True)
class Refused:
    """A submit's error, as it crosses from its process (exceptions with arguments do not pickle)."""

    kind: str
    field: str
    message: str


def _race(specs: list[Any], settings: Settings) -> list[Submission | Refused]:
    """Each spec submitted by its own process (forked: no imports to wait for), all let go at once."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(specs))
    answers = context.Queue()

    def one(number: int) -> None:
        start.wait()
        try:
            answers.put((number, submit(specs[number], settings)))
        except Exception as exc:  # noqa: BLE001 - the loser's error is what the test reads
            answers.put((number, Refused(type(exc).__name__, getattr(exc, "field", ""), str(exc))))

    processes = [context.Process(target=one, args=(number,)) for number in range(len(specs))]
    for process in processes:
        process.start()
    results = dict(answers.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return [results[number] for number in range(len(specs))]


def test_two_submits_to_one_fresh_output_one_wins(tmp_path: Path, settings: Settings) -> None:
    write_rows(tmp_path / "in.parquet", 12)
    for round_number in range(ROUNDS):  # each round a fresh output: the race is lost by whoever writes second
        output = tmp_path / f"out-{round_number}"
        specs = [tokenize_spec(tmp_path / "in.parquet", output, shard_rows=rows) for rows in (3, 4)]
        results = _race(specs, settings)
        won = [r for r in results if isinstance(r, Submission)]
        lost = [r for r in results if not isinstance(r, Submission)]
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], Refused) and (lost[0].kind, lost[0].field) == ("SpecError", "output"), lost
        # Refused either way: at the same moment, or just after the winner's manifest was there.
        assert (f"another submit wrote job {won[0].job_id}" in lost[0].message
                or f"holds another job ({won[0].job_id}" in lost[0].message), lost[0]
        assert OutputLayout(str(output)).read_manifest().job_id == won[0].job_id
    queued = {json.loads(raw)["headers"]["argsrepr"].split()[0] for raw in queued_messages(settings.broker_url,
                                                                                            settings.queue)}
    manifests = {f"job={OutputLayout(str(tmp_path / f'out-{n}')).read_manifest().job_id}" for n in range(ROUNDS)}
    assert queued == manifests  # only the winners' shards wait for a worker


def test_two_submits_of_one_job_share_it(tmp_path: Path, settings: Settings) -> None:
    """The same spec twice at once is one job resumed, not a conflict."""
    write_rows(tmp_path / "in.parquet", 12)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=4)
    results = _race([spec, spec], settings)
    assert all(isinstance(r, Submission) for r in results), results
    assert len({r.job_id for r in results if isinstance(r, Submission)}) == 1

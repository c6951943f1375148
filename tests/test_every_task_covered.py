"""A task type added to the registry cannot be forgotten by the end-to-end tests or the benchmarks."""

from __future__ import annotations

from jobs.tasks.registry import TASKS, task_name


def test_every_task_runs_end_to_end_through_workers() -> None:
    from tests.test_end_to_end_pipelines import JOBS as PIPELINE_JOBS
    from tests.test_end_to_end_tasks import JOBS as TASK_JOBS

    covered = {task_name(name.partition("@")[0]) for name in (*TASK_JOBS, *PIPELINE_JOBS)}  # "alias@engine"
    assert sorted(set(TASKS) - covered) == []


def test_every_task_has_a_benchmark() -> None:
    from bench.run import TASK_MODULES
    from bench.tasks import BENCHES

    assert sorted(set(TASKS) - set(BENCHES)) == []
    assert set(TASK_MODULES) == set(TASKS)

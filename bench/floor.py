"""The floor: the model's own forward passes (or ``generate`` calls) and nothing else.

Rows are tokenized, grouped into the same length-sorted batches batchformers forms
(``jobs.engine.batching.length_sorted_batches`` per shard) and padded into tensors before
the clock starts; only the model calls are timed. The floor uses the same layout
of processes and threads as batchformers' local workers (``workers`` processes,
``cores // workers`` torch threads each, shards dealt out in turn), so that the
ratio batchformers / floor measures batchformers' own costs, not a thread setting.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from typing import Any

from jobs.engine.batching import length_sorted_batches


@dataclass(frozen=True)
class Batches:
    """Padded model batches and what they hold."""

    tensors: list[dict[str, Any]]
    real_tokens: int
    padded_tokens: int


@dataclass(frozen=True)
class FloorJob:
    """What a floor process needs: the model, the tokenized rows and how to call the model."""

    model_dir: str
    auto_class: str  # a transformers Auto class name
    features: list[dict[str, list[int]]]
    names: tuple[str, ...]
    pad_id: int
    generate: dict[str, Any] | None = None  # generate() keyword arguments; None: forward passes


@dataclass
class FloorTiming:
    seconds: float
    cpu_seconds: float
    generated_tokens: int = 0
    per_process: list[float] = field(default_factory=list)


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def sorted_batches(lengths: list[int], shard_rows: int, batch_size: int,
                   max_batch_tokens: int | None = None) -> list[list[int]]:
    """Length-sorted batches of each shard's rows, as a worker forms them."""
    batches = []
    for first in range(0, len(lengths), shard_rows):
        shard = lengths[first : first + shard_rows]
        batches += [[first + i for i in batch] for batch in length_sorted_batches(shard, batch_size, max_batch_tokens)]
    return batches


def input_order_batches(count: int, batch_size: int) -> list[list[int]]:
    """What a pipeline forms: ``batch_size`` consecutive items."""
    return [list(range(first, min(first + batch_size, count))) for first in range(0, count, batch_size)]


def pad(features: list[dict[str, list[int]]], batches: list[list[int]], names: tuple[str, ...],
        pad_id: int) -> Batches:
    """Right-padded ``torch`` tensors per batch for the feature ``names`` present in the features."""
    import torch

    lengths = [len(f["input_ids"]) for f in features]
    tensors = []
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        item: dict[str, Any] = {}
        for name in names:
            if name not in features[batch[0]]:
                continue
            fill = pad_id if name == "input_ids" else 0
            item[name] = torch.tensor([features[i][name] + [fill] * (longest - lengths[i]) for i in batch])
        item["attention_mask"] = torch.tensor([[1] * lengths[i] + [0] * (longest - lengths[i]) for i in batch])
        tensors.append(item)
    return Batches(tensors, sum(lengths), padded_tokens(lengths, batches))


def run_floor(job: FloorJob, batches_per_shard: list[list[list[int]]], workers: int,
              in_process: bool = False) -> FloorTiming:
    """Time the model calls over every shard's batches in ``workers`` processes started together.

    Each process loads the model and pads its batches first, then all start at once;
    the floor is the time from the first start to the last finish. ``in_process`` runs
    all batches here instead, with every core (quick mode: no process start-up to pay).
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    parts: list[list[list[int]]] = [[] for _ in range(workers)]
    for shard, batches in enumerate(batches_per_shard):
        parts[shard % workers].extend(batches)
    parts = [part for part in parts if part]
    if in_process:
        report = _time_batches(job, [b for part in parts for b in part], None, None)
        return FloorTiming(report["end"] - report["start"], report["cpu"], report["generated"],
                           [report["end"] - report["start"]])
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(parts))
    queue = context.Queue()
    processes = [context.Process(target=_floor_process, args=(job, part, threads, barrier, queue), daemon=True)
                 for part in parts]
    for process in processes:
        process.start()
    reports = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    failed = [r for r in reports if "error" in r]
    if failed:
        raise RuntimeError(f"floor process failed: {failed[0]['error']}")
    return FloorTiming(
        seconds=max(r["end"] for r in reports) - min(r["start"] for r in reports),
        cpu_seconds=sum(r["cpu"] for r in reports),
        generated_tokens=sum(r["generated"] for r in reports),
        per_process=[r["end"] - r["start"] for r in reports],
    )


def _floor_process(job: FloorJob, batches: list[list[int]], threads: int, barrier: Any, queue: Any) -> None:
    try:
        queue.put(_time_batches(job, batches, threads, barrier))
    except BaseException as exc:  # reported to the parent, which raises
        barrier.abort()
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _time_batches(job: FloorJob, batches: list[list[int]], threads: int | None, barrier: Any) -> dict[str, Any]:
    """Load, pad and warm up, (wait for the others,) then time the model calls alone."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    model = getattr(transformers, job.auto_class).from_pretrained(job.model_dir).eval()
    padded = pad(job.features, batches, job.names, job.pad_id)
    generated = 0
    with torch.inference_mode():
        if job.generate is None:
            model(**min(padded.tensors, key=lambda t: t["input_ids"].numel()))  # warm-up, not timed
        if barrier is not None:
            barrier.wait()
        start, cpu = time.time(), time.process_time()
        for tensors in padded.tensors:
            if job.generate is None:
                model(**tensors)
            else:
                generated += int(model.generate(**tensors, **job.generate).numel())
        end = time.time()
    return {"start": start, "end": end, "cpu": time.process_time() - cpu, "generated": generated}

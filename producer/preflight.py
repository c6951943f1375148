"""``batchformers plan JOB``: what a job will meet before it runs, read from a sample of its input.

No broker and nothing written: the shards come from the same planning as submit
(:func:`producer.plan.plan_job`, footers only), the sample is spread over the whole input
(:mod:`jobs.io.sample`), bad rows are found by the engine's own row check (the loaded runner's
``row_errors``; with ``--no-model``, :func:`jobs.engine.batching.text_error`), token lengths by
the model's tokenizer, padding by the engine's batching (:func:`jobs.engine.batching.length_sorted_batches`
over blocks of ``ENCODE_ROWS``), and the time by running the model on part of the sample here.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from jobs.engine.batching import length_sorted_batches, text_error
from jobs.engine.staged import ENCODE_ROWS
from jobs.io.sample import read_sample
from jobs.settings import Settings
from jobs.spec import JobSpec
from producer.plan import plan_job

HISTOGRAM_BINS = 10
IMPORTED_FIRST = ("torch", "transformers", "jobs.engine.loading", "jobs.engine.staged")
SHARD_OVERHEAD_SECONDS = 0.05  # a shard's fixed cost besides its rows (read, commit, ledger): a local-disk figure
ASSUMES = ("the sample's rows are like the rest of the input; the workers are of this machine's kind (device, "
           "threads), each with its cores to itself (workers sharing a CPU's cores are slower); each worker loads "
           "the model once (as measured here) and every shard adds {overhead}s of fixed cost (local disk; more on "
           "object storage); broker and queue waits, retries and a slower first batch on a cold GPU are not counted")


@dataclass
class Estimate:
    model_rows: int
    load_seconds: float
    seconds_per_row: float
    shard_seconds: float
    """The shards' own time, summed: the rows at ``seconds_per_row`` plus each shard's fixed cost (no loads)."""
    worker_seconds: float
    wall_seconds: float
    workers: int
    assumes: str


@dataclass
class Preflight:
    job: str
    task: str
    model: str
    rows: int
    shards: int
    shard_rows: dict[str, int]
    sample_rows: int
    invalid: dict[str, int]
    empty: int
    duplicates: int
    duplicate_share: float
    model_limit: int | None
    token_histogram: list[tuple[int, int, int]]  # (from, to, rows)
    token_lengths: dict[str, int]
    over_limit: int
    over_limit_effect: str
    padding_ratio: float | None
    estimate: Estimate | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preflight(spec: JobSpec, sample: int = 4000, model_rows: int = 256, workers: int = 1,
              run_model: bool = True) -> Preflight:
    """The job's pre-flight report; reads the input and the model, writes nothing."""
    manifest, _ = plan_job(spec)
    sizes = [plan.rows for plan in manifest.shards]
    roles = spec.input_columns()
    table = read_sample(manifest.sources, list(dict.fromkeys(roles.values())), sample)
    inputs = {role: table.column(column).to_pylist() for role, column in roles.items()}
    count = table.num_rows
    runner, load_seconds = _load(spec) if run_model else (None, 0.0)
    errors = runner.row_errors(inputs, count) if runner is not None else _row_errors(inputs, count)
    valid = [row for row in range(count) if row not in errors]
    texts = [tuple(inputs[role][row] for role in roles) for row in valid]
    filled = [values for values in texts if all(value.strip() for value in values)]
    empty = len(texts) - len(filled)
    distinct = len({hashlib.sha1(json.dumps(values).encode()).digest() for values in filled})
    tokenizer, limit = _tokenizer(spec, runner)
    lengths = _token_lengths(tokenizer, texts)
    over = int(sum(1 for length in lengths if limit is not None and length > limit))
    found = Preflight(
        job=manifest.job_id, task=spec.task, model=spec.resolved_model() or "", rows=manifest.total_rows,
        shards=len(sizes), shard_rows=_spread(sizes), sample_rows=count, invalid=_by_message(errors),
        empty=empty, duplicates=len(filled) - distinct,
        duplicate_share=round((len(filled) - distinct) / len(filled), 4) if filled else 0.0,
        model_limit=limit, token_histogram=_histogram(lengths), token_lengths=_spread(lengths), over_limit=over,
        over_limit_effect=_over_limit_effect(spec, limit, over),
        padding_ratio=_padding(lengths, limit, spec))
    if count < manifest.total_rows:
        found.notes.append(f"counts are of a sample of {count:,} of {manifest.total_rows:,} rows, "
                           "spread over the whole input")
    if runner is not None:
        found.estimate = _estimate(spec, runner, inputs, load_seconds, model_rows, sizes, workers)
    return found


def _load(spec: JobSpec) -> tuple[Any, float]:
    import importlib

    for name in IMPORTED_FIRST:  # a worker imports these before its first shard: not part of a model load
        importlib.import_module(name)
    settings = Settings()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the weights' loading bar would land amid the report
    started = time.perf_counter()
    task = spec.task_type()
    runner = task.load(spec.load_options())
    return runner, time.perf_counter() - started


def _row_errors(inputs: dict[str, list[Any]], count: int) -> dict[int, str]:
    """The engine's default row check (null or non-string inputs), first role first."""
    found: dict[int, str] = {}
    for row in range(count):
        for role, column in inputs.items():
            error = text_error(column[row], role)
            if error:
                found[row] = error
                break
    return found


def _by_message(errors: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in errors.values():
        counts[message] = counts.get(message, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _tokenizer(spec: JobSpec, runner: Any) -> tuple[Any, int | None]:
    """The model's tokenizer and the longest input it takes (the runner's own figure when loaded)."""
    from jobs.engine.loading import load_tokenizer, model_input_limit

    tokenizer = getattr(runner, "tokenizer", None) or load_tokenizer(spec.load_options())
    limit = getattr(runner, "limit", None)
    if limit is None:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(spec.resolved_model(), revision=spec.revision)
        except Exception:  # noqa: BLE001 - a tokenizer-only model: its tokenizer's limit alone
            config = None
        limit = model_input_limit(tokenizer, config)
    return tokenizer, limit


def _token_lengths(tokenizer: Any, texts: list[tuple[str, ...]]) -> list[int]:
    if not texts:
        return []
    columns = list(zip(*texts, strict=True))
    pair = columns[1] if len(columns) > 1 else None
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "longer than the specified maximum": counting those rows is the point
    try:
        encoded = tokenizer(list(columns[0]), list(pair) if pair else None, add_special_tokens=True,
                            truncation=False, verbose=False)
    finally:
        hf_logging.set_verbosity(level)
    return [len(ids) for ids in encoded["input_ids"]]


def _spread(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    array = np.asarray(values)
    return {"min": int(array.min()), "median": int(np.median(array)), "p90": int(np.percentile(array, 90)),
            "p99": int(np.percentile(array, 99)), "max": int(array.max())}


def _histogram(lengths: list[int]) -> list[tuple[int, int, int]]:
    if not lengths:
        return []
    counts, edges = np.histogram(lengths, bins=min(HISTOGRAM_BINS, max(1, len(set(lengths)))))
    return [(int(edges[i]), int(edges[i + 1]), int(counts[i])) for i in range(len(counts))]


def _over_limit_effect(spec: JobSpec, limit: int | None, over: int) -> str:
    if limit is None:
        return "the model sets no input limit"
    if not over:
        return f"no row is over the model's {limit} tokens"
    params = spec.params
    if spec.task == "ner":
        if params.get("stride") is not None:
            return (f"read whole, in overlapping windows of {limit} tokens (stride {params['stride']}): "
                    "more model items, no truncation")
        return f"cut to {limit} tokens and marked truncated: true (set params.stride to read them whole)"
    if spec.task == "qa":
        return "read in overlapping chunks (doc_stride): more model items"
    if spec.task in ("summarization", "translation"):
        if params.get("truncation") is False:
            return "row errors (truncation: false); drop it to cut them, marked truncated: true"
        return f"cut to {limit} tokens and marked truncated: true (truncation: false makes them errors)"
    if spec.task == "generation":
        return "row errors when the prompt plus max_new_tokens exceed the model's positions"
    return f"cut to {limit} tokens"


def _padding(lengths: list[int], limit: int | None, spec: JobSpec) -> float | None:
    """Share of padding in the batches the engine would form of the sample (cut rows at the limit)."""
    if not lengths:
        return None
    cut = [min(length, limit) if limit else length for length in lengths]
    real = padded = 0
    for start in range(0, len(cut), ENCODE_ROWS):
        block = cut[start : start + ENCODE_ROWS]
        for batch in length_sorted_batches(block, spec.batch_size, spec.max_batch_tokens):
            real += sum(block[i] for i in batch)
            padded += max(block[i] for i in batch) * len(batch)
    return round(1 - real / padded, 4) if padded else None


def _estimate(spec: JobSpec, runner: Any, inputs: dict[str, list[Any]], load_seconds: float,
              model_rows: int, sizes: list[int], workers: int) -> Estimate:
    """Time the model on ``model_rows`` of the sample (evenly picked, bad rows included as the job has them)."""
    count = len(next(iter(inputs.values())))
    step = max(1, count // max(1, model_rows))
    rows = list(range(0, count, step))[:model_rows]
    part = {role: [column[row] for row in rows] for role, column in inputs.items()}
    options = spec.run_options(Settings().overlap)
    runner.run_table({role: column[: min(2, count)] for role, column in part.items()}, None, options)  # warm-up:
    started = time.perf_counter()  # a worker pays a first call's lazy set-up once, not per shard
    runner.run_table(part, None, options)
    per_row = (time.perf_counter() - started) / max(1, len(rows))
    work = sum(sizes) * per_row + len(sizes) * SHARD_OVERHEAD_SECONDS
    used = max(1, min(workers, len(sizes)))
    longest = max(sizes) * per_row + SHARD_OVERHEAD_SECONDS
    return Estimate(model_rows=len(rows), load_seconds=round(load_seconds, 3), seconds_per_row=round(per_row, 6),
                    shard_seconds=round(work, 3), worker_seconds=round(work + used * load_seconds, 3),
                    wall_seconds=round(load_seconds + max(work / used, longest), 3), workers=workers,
                    assumes=ASSUMES.format(overhead=SHARD_OVERHEAD_SECONDS))


def render(found: Preflight) -> str:
    """The report as text for a terminal."""
    lines = [f"job {found.job}: {found.task} with {found.model}",
             f"  rows:       {found.rows:,} in {found.shards:,} shard{'s' if found.shards != 1 else ''} "
             f"(rows per shard {_fmt(found.shard_rows)})",
             f"  sample:     {found.sample_rows:,} rows" + (f" ({found.notes[0]})" if found.notes else ""),
             f"  tokens:     {_fmt(found.token_lengths)} per row; the model takes {found.model_limit or 'any'}"]
    widest = max((rows for _, _, rows in found.token_histogram), default=0)
    for low, high, rows in found.token_histogram:
        bar = "#" * (round(40 * rows / widest) if widest else 0)
        lines.append(f"    {low:>6}-{high:<6} {rows:>7,} {bar}")
    lines.append(f"  over limit: {found.over_limit:,} rows: {found.over_limit_effect}")
    invalid = sum(found.invalid.values())
    lines.append(f"  invalid:    {invalid:,} rows (row errors in the output)")
    lines += [f"    {rows:,} x {message}" for message, rows in found.invalid.items()]
    lines.append(f"  empty:      {found.empty:,} rows")
    lines.append(f"  duplicates: {found.duplicates:,} rows ({found.duplicate_share:.1%} of the non-empty rows)")
    if found.padding_ratio is not None:
        lines.append(f"  padding:    {found.padding_ratio:.1%} of the padded tokens (batch_size, length-sorted)")
    estimate = found.estimate
    if estimate is None:
        lines.append("  estimate:   none (--no-model)")
    else:
        lines += [f"  model:      loaded in {estimate.load_seconds:.1f}s; {estimate.model_rows} rows at "
                  f"{estimate.seconds_per_row * 1000:.2f} ms/row here",
                  f"  estimate:   {estimate.worker_seconds:,.1f} worker-seconds ({estimate.shard_seconds:,.1f} of them "
                  f"the shards', the rest model loads); wall {estimate.wall_seconds:,.1f}s on {estimate.workers} "
                  "worker(s)",
                  f"  assumes:    {estimate.assumes}"]
    return "\n".join(lines)


def _fmt(spread: dict[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in spread.items()) or "-"

"""``python -m bench --host``: is the host fast enough to keep a GPU busy?

For every task type, a near-free model of the task's family (1 layer, hidden 32) with the
real MiniLM WordPiece vocabulary leaves only the host's work: tokenize, pad, decode, build
Arrow. Measured in one run, per task:

- host tokens/s per core (input tokens over the process's CPU seconds) and the host path
  over one raw batched tokenizer call on the same rows (``tokenizer(texts)``);
- the same model whose every batch also sleeps (the ``device-seconds`` fault of :mod:`worker.faults`,
  releasing the GIL as a device sync does), set so that device time equals host time, and
  the share of that device time hidden behind host work: ``(T_host + T_device - T_both) / T_device``,
  with overlap on and off.

NER (aggregation ``simple``) also runs end to end through ``batchformers run`` with one worker
(embedded Redis), timed inside the worker (first shard start to last commit), with the torch
threads ``run`` gives a worker (the cores over the workers), as a user gets them: with those, torch's
OpenMP threads spinning between kernels took the tokenizer's cores, 0.25x the raw call on 2 cores
(``worker.app._limit_threads`` makes them sleep).
Targets (NER through ``run``): host path >= 0.5x the raw tokenizer call, >= 60% of device time hidden.

On a CPU the 1-layer model's forward still computes on the device thread (on a GPU its compute is device
time, not host time), so NER is measured twice: with that model and with the same model without layers
(embeddings and the classifier: its forward costs the host little more than the calls), and the host
path is also given without the forward's own seconds (timed in the same serial run). The load average
is recorded with every task: on shared cores the wall-clock figures move with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import qa_rows, sentence_rows, text_rows, write_parquet
from bench.models import COMPLETE, _bert_tokenizer
from jobs.engine.base import RunOptions
from worker.faults import FAULTS_ENV, simulate_device_time

HOST_TARGET = 0.5
RUN_TARGET = 0.6  # the host path through `run` over the raw tokenizer call
RUN_ROWS = 40_000  # the NER job of figures(): long enough to hide start-up; a quick run takes a tenth
QUICK_RUN_ROWS = 4_000
RUN_SHARD_ROWS = 10_000
HIDDEN_TARGET = 0.6
ROWS = {"tokenize": 20_000, "ner": 20_000, "qa": 1_000, "summarization": 600, "translation": 1_500}
QUICK_ROWS = {"tokenize": 400, "ner": 400, "qa": 40, "summarization": 24, "translation": 40}
PARAMS: dict[str, dict[str, Any]] = {
    "ner": {"aggregation_strategy": "simple"},
    "summarization": {"num_beams": 2, "max_new_tokens": 16, "min_length": 0},
    "translation": {"num_beams": 2, "max_new_tokens": 16},
}
HIDDEN = 32
LAYERS = 1
VARIANTS = {"ner": (1, 0)}
"""Layer counts to measure per task (default ``LAYERS``): 0 leaves a forward with nearly no compute of its own."""


def build_near_free(task: str, directory: Path, layers: int = LAYERS) -> Path:
    """A ``layers``-layer, hidden-32 model of ``task``'s family with the MiniLM vocabulary (built once)."""
    if (directory / COMPLETE).exists():
        return directory
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForQuestionAnswering,
        BertForTokenClassification,
        MarianConfig,
        MarianMTModel,
    )

    from jobs.testing.tiny.encoders import NER_LABELS

    torch.manual_seed(0)
    tokenizer = _bert_tokenizer()
    vocab = len(tokenizer)
    encoder = {"vocab_size": vocab, "hidden_size": HIDDEN, "num_hidden_layers": layers, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 512}
    seq2seq = {"vocab_size": vocab, "d_model": HIDDEN, "encoder_layers": layers, "decoder_layers": layers,
               "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
               "decoder_ffn_dim": 64, "max_position_embeddings": 512, "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
               "decoder_start_token_id": tokenizer.cls_token_id, "forced_eos_token_id": None}
    model: Any
    if task in ("ner", "tokenize"):
        model = BertForTokenClassification(BertConfig(
            **encoder, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
            label2id={label: i for i, label in enumerate(NER_LABELS)}))
        with torch.no_grad():
            model.classifier.bias[0] = 3.0  # mostly "O", as in real text
    elif task == "qa":
        model = BertForQuestionAnswering(BertConfig(**encoder))
    elif task == "summarization":
        model = BartForConditionalGeneration(BartConfig(**seq2seq))
    else:
        model = MarianMTModel(MarianConfig(**{**seq2seq, "decoder_start_token_id": tokenizer.pad_token_id}))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / COMPLETE).write_text(task + "\n")
    return directory


def rows_for(task: str, count: int) -> dict[str, list[str]]:
    if task == "qa":
        questions, contexts = qa_rows(count)
        return {"question": questions, "context": contexts}
    if task in ("summarization",):
        return {"text": text_rows(count)}
    if task == "translation":
        return {"text": sentence_rows(count)}
    return {"text": text_rows(count)}


@dataclass
class Timed:
    seconds: float
    cpu_seconds: float
    value: Any = None
    """What the timed call returned."""


def timed(fn: Callable[[], Any]) -> Timed:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return Timed(time.perf_counter() - wall, time.process_time() - cpu, value)


def raw_tokenizer(model_dir: Path, rows: dict[str, list[str]]) -> tuple[Timed, int]:
    """One batched tokenizer call over every row, as a user would write it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    args = (rows["question"], rows["context"]) if "question" in rows else (rows["text"],)
    tokenizer(*[list(a[:50]) for a in args])  # warm up
    tokens: list[int] = []
    result = timed(lambda: tokens.extend(len(ids) for ids in tokenizer(*args)["input_ids"]))
    return result, sum(tokens)


def in_process(task: str, model_dir: Path, rows: dict[str, list[str]], batch_size: int) -> dict[str, Any]:
    """Host time, then host + simulated device time with overlap off and on, in this process."""
    import torch

    from jobs.engine.base import LoadOptions
    from jobs.tasks.registry import get_task_class

    torch.set_num_threads(1)
    runner: Any = get_task_class(task).from_params(PARAMS.get(task, {})).load(
        LoadOptions(model=str(model_dir), device="cpu"))
    runner.run_table({k: v[:50] for k, v in rows.items()}, options=RunOptions(batch_size=batch_size))
    host = timed(lambda: runner.run_table(rows, options=RunOptions(batch_size=batch_size, overlap=True)))
    host_serial = timed(lambda: runner.run_table(rows, options=RunOptions(batch_size=batch_size, overlap=False)))
    stats = host_serial.value.stats  # of the serial run: the batches are the same with overlap on
    result: dict[str, Any] = {"host_seconds": host.seconds, "host_cpu_seconds": host.cpu_seconds,
                              "host_serial_seconds": host_serial.seconds,
                              "forward_serial_seconds": stats.forward_seconds,
                              "forward_share": stats.forward_seconds / host_serial.seconds}
    if not runner.device_stage:
        return result
    per_token = host_serial.seconds / max(1, stats.padded_tokens)
    simulate_device_time(per_token)
    try:
        device = per_token * stats.padded_tokens
        for overlap in (False, True):
            both = timed(lambda o=overlap: runner.run_table(rows, options=RunOptions(batch_size=batch_size,
                                                                                     overlap=o)))
            base = host_serial.seconds if not overlap else host.seconds
            key = "overlap" if overlap else "serial"
            result[f"both_{key}_seconds"] = both.seconds
            result[f"hidden_{key}"] = (base + device - both.seconds) / device
        result["device_seconds"] = device
    finally:
        simulate_device_time(0.0)
    return result


def end_to_end_ner(model_dir: Path, rows: dict[str, list[str]], workdir: Path) -> dict[str, Any]:
    """NER through ``batchformers run`` (embedded Redis, one worker): host only, then with device time."""
    source = write_parquet(rows, workdir / "data" / "host-ner.parquet")
    result: dict[str, Any] = {}
    for label, per_token in (("host", 0.0), ("both", None)):
        if per_token is None:
            per_token = result["host_steady_seconds"] / max(1, result["padded_tokens"])
        steady, total, output = run_ner(model_dir, source, workdir, label, per_token)
        result[f"{label}_steady_seconds"] = steady
        result[f"{label}_total_seconds"] = total
        result["padded_tokens"] = _padded_tokens(output)
        if per_token:
            result["device_seconds"] = per_token * result["padded_tokens"]
    return result


def run_ner(model_dir: Path, source: Path, workdir: Path, label: str, per_token: float = 0.0,
            shard_rows: int = RUN_SHARD_ROWS) -> tuple[float, float, Path]:
    """One NER job through ``batchformers run`` (one worker, run's own thread settings): (first shard start
    to last commit, command to exit, the output) in seconds; ``per_token``: simulated device seconds."""
    from bench.measure import WorkerPool, run_batchformers

    output = workdir / "out" / f"{model_dir.name}-{label}"
    if per_token:  # the workers inherit it and apply it from their first shard on
        os.environ[FAULTS_ENV] = f"device-seconds={per_token!r}"
    try:
        spec = {"task": "ner", "model": str(model_dir), "input": str(source), "columns": {"id": "id"},
                "output": str(output), "params": PARAMS["ner"], "shard_rows": shard_rows, "device": "cpu"}
        with WorkerPool(1, workdir / "logs" / f"{model_dir.name}-{label}", shared=False) as pool:
            timing, _, phases = run_batchformers(spec, pool, timeout=1800)
    finally:
        os.environ.pop(FAULTS_ENV, None)
    return phases["steady_seconds"], timing.seconds, output


def figures(workdir: Path, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Issue 21's figure for ``python -m bench --startup``: NER on a 0-layer model (embeddings and head:
    the job's rate is the host path's) through ``batchformers run``, one worker, over one raw batched
    tokenizer call on the same rows, measured in the same run."""
    count = QUICK_RUN_ROWS if quick else RUN_ROWS
    rows = rows_for("ner", count)
    model_dir = build_near_free("ner", workdir / "models" / "near-free-ner-0-layers", 0)
    load = os.getloadavg()[0]
    raw, tokens = raw_tokenizer(model_dir, rows)
    source = write_parquet(rows, workdir / "data" / f"host-ner-{count}.parquet")
    steady, _, _ = run_ner(model_dir, source, workdir, f"run-{count}", shard_rows=max(1, count // 4))
    log(f"host path through run: {tokens / steady:,.0f} tokens/s, raw tokenizer {tokens / raw.seconds:,.0f}")
    note = f"{count:,} rows, {tokens:,} tokens, load {load:.1f}-{os.getloadavg()[0]:.1f}"
    return [
        {"name": "NER host path through `run` ÷ raw tokenizer call", "value": raw.seconds / steady, "unit": "x",
         "target": RUN_TARGET, "better": "higher", "note": note},
        {"name": "NER through `run` (0 layers, 1 worker)", "value": tokens / steady, "unit": "tokens/s", "note": note},
        {"name": "raw batched tokenizer call", "value": tokens / raw.seconds, "unit": "tokens/s", "note": note},
    ]


def _padded_tokens(output: Path) -> int:
    """Padded tokens fed to the model, from the job's shard markers."""
    import json

    markers = [json.loads(p.read_text()) for p in (output / "_batchformers" / "shards").glob("*.json")
               if not p.name.endswith(".failed.json")]
    return sum(int(m.get("padded_tokens", 0)) for m in markers)


def run_host(quick: bool, workdir: Path, tasks: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    counts = QUICK_ROWS if quick else ROWS
    results: dict[str, Any] = {"quick": quick, "tasks": {}}
    skipped = [task for task in tasks if task not in counts]
    if skipped:
        log(f"host: no near-free model for {', '.join(skipped)}; measuring {', '.join(sorted(counts))} only")
    for task in (task for task in tasks if task in counts):
        rows = rows_for(task, counts[task])
        for layers in VARIANTS.get(task, (LAYERS,)):
            key = task if layers == LAYERS else f"{task}, {layers} layers"
            results["tasks"][key] = entry = measure_task(task, layers, rows, workdir)
            log(f"host {key}: {entry}")
    return results


def measure_task(task: str, layers: int, rows: dict[str, list[str]], workdir: Path) -> dict[str, Any]:
    """One task with one near-free model: raw tokenizer, in process, and (NER) through ``batchformers run``."""
    suffix = "" if layers == LAYERS else f"-{layers}-layers"
    model_dir = build_near_free(task, workdir / "models" / f"near-free-{task}{suffix}", layers)
    load_before = os.getloadavg()[0]
    raw, tokens = raw_tokenizer(model_dir, rows)
    measured = in_process(task, model_dir, rows, batch_size=64)
    without_forward = measured["host_serial_seconds"] - measured["forward_serial_seconds"]
    entry = {"layers": layers, "rows": len(next(iter(rows.values()))), "tokens": tokens, "raw_seconds": raw.seconds,
             "raw_cpu_seconds": raw.cpu_seconds, **measured,
             "host_tokens_per_cpu_second": tokens / max(measured["host_cpu_seconds"], 1e-9),
             "host_vs_raw": raw.seconds / measured["host_seconds"],
             "host_vs_raw_without_forward": raw.seconds / max(without_forward, 1e-9)}
    if task == "ner":
        e2e = end_to_end_ner(model_dir, rows, workdir)
        device = e2e["device_seconds"]
        e2e["hidden"] = (e2e["host_steady_seconds"] + device - e2e["both_steady_seconds"]) / device
        e2e["host_vs_raw"] = raw.seconds / e2e["host_steady_seconds"]
        entry["run"] = e2e
    entry["load_average"] = [load_before, os.getloadavg()[0]]
    return entry


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "## Host path (`python -m bench --host`)",
        "",
        "Near-free models (1 layer, hidden 32, MiniLM WordPiece vocabulary) leave only the host's work. "
        "`host ÷ raw` is the host path's speed over one raw batched `tokenizer(texts)` call on the same rows; "
        "`hidden` is the share of a simulated device time (a sleeping forward, equal to the host time) that "
        "overlaps host work: `(T_host + T_device - T_both) / T_device`. "
        f"Targets for NER through `batchformers run`: host ÷ raw >= {HOST_TARGET}, hidden >= {HIDDEN_TARGET:.0%}.",
        "",
        "The near-free model's own forward runs on the device thread too (on a CPU it is compute), so at most "
        "`1 - forward share` of the device time can be hidden here; `forward share` is its part of the serial host time. "
        "`without forward` is the raw call over the serial host time less the forward's own seconds (same run); "
        "`0 layers`: the same model without layers, a forward with nearly no compute of its own. "
        "`load` is the load average (1 min) before and after the task.",
        "",
        "| task | rows | tokens | host tokens/s per core | host ÷ raw | host ÷ raw without forward | forward share "
        "| hidden, overlap off | hidden, overlap on | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in results["tasks"].items():
        hidden_off = entry.get("hidden_serial")
        hidden_on = entry.get("hidden_overlap")
        load = "-".join(f"{value:.1f}" for value in entry.get("load_average", [])) or "-"
        without = entry.get("host_vs_raw_without_forward")
        lines.append(
            f"| {task} (in process) | {entry['rows']} | {entry['tokens']} | {entry['host_tokens_per_cpu_second']:,.0f} | "
            f"{entry['host_vs_raw']:.2f} | {'-' if without is None else f'{without:.2f}'} | "
            f"{_pct(entry.get('forward_share'))} | {_pct(hidden_off)} | {_pct(hidden_on)} | {load} |")
        if "run" in entry:
            run = entry["run"]
            lines.append(f"| {task} (`batchformers run`, 1 worker) | {entry['rows']} | {entry['tokens']} | - | "
                         f"{run['host_vs_raw']:.2f} | - | - | - | {_pct(run['hidden'])} | {load} |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"

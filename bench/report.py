"""Results: per-task measurements, ratios and targets, as JSON and as a Markdown table."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import Measurement

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

TARGETS: dict[str, dict[str, float]] = {
    "tokenize": {"vs_baseline": 0.8},
    "ner": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "qa": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "summarization": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "translation": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "classification": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "zero_shot": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "embeddings": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "fill_mask": {"vs_baseline": 2.0, "vs_floor": 0.9},
    "generation": {"vs_baseline": 2.0, "vs_floor": 0.9},
}
ENGINE_TARGETS: dict[str, dict[str, float]] = {
    "summarization": {"ctranslate2 float32": 2.0},
    "translation": {"ctranslate2 float32": 3.0},
}
"""Another engine's run ÷ the baseline (the target for CPU, float32)."""
SHARD_OVERHEAD_TARGET = 0.01


@dataclass
class TaskResult:
    task: str
    model: str
    rows: int
    batch_size: int
    shard_rows: int
    workers: int
    max_batch_tokens: int | None = None
    measurements: dict[str, Measurement] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    engine_parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per other-engine method: outputs equal to the baseline's."""
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def ratio(self, other: str) -> float | None:
        mine, theirs = self.measurements.get("batchformers"), self.measurements.get(other)
        if mine is None or theirs is None or not mine.seconds:
            return None
        return theirs.seconds / mine.seconds

    def steady_ratio(self) -> float | None:
        """batchformers/floor with the start-up (processes, imports, model load) left out."""
        mine, floor = self.measurements.get("batchformers"), self.measurements.get("floor")
        steady = mine.extra.get("steady_seconds") if mine else None
        return floor.seconds / steady if floor and steady else None

    def targets(self) -> dict[str, dict[str, Any]]:
        found = {}
        for name, wanted in TARGETS.get(self.task, {}).items():
            value = self.ratio(name.removeprefix("vs_"))
            found[name] = {"target": wanted, "measured": value, "met": value is not None and value >= wanted}
        return found

    def engine_targets(self) -> dict[str, dict[str, Any]]:
        """Each other engine's speed-up over the baseline against its target."""
        found = {}
        baseline = self.measurements.get("baseline")
        for method, wanted in ENGINE_TARGETS.get(self.task, {}).items():
            mine = self.measurements.get(method)
            value = baseline.seconds / mine.seconds if baseline and mine and mine.seconds else None
            found[method] = {"target": wanted, "measured": value, "met": value is not None and value >= wanted}
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "model": self.model, "rows": self.rows, "batch_size": self.batch_size,
            "shard_rows": self.shard_rows, "max_batch_tokens": self.max_batch_tokens, "workers": self.workers, "skipped": self.skipped,
            "measurements": {k: m.to_dict() for k, m in self.measurements.items()},
            "ratios": {"vs_baseline": self.ratio("baseline"), "vs_floor": self.ratio("floor"),
                       "vs_floor_steady": self.steady_ratio()},
            "targets": self.targets(), "parity": self.parity, "notes": self.notes,
            "engine_parity": self.engine_parity, "engine_targets": self.engine_targets(),
        }


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "tokenizers", "pyarrow", "celery"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_at_start": _load(), **versions}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def markdown(payload: dict[str, Any]) -> str:
    """The generated part of BENCHMARKS.md."""
    info = payload["machine"]
    lines = [
        f"Mode `{payload['mode']}`, {payload['date']}, total {payload['total_seconds']:.0f} s. Machine: {info['cpu']}, "
        f"{info['cores']} cores, GPU: {info['gpu'] or 'none'}; torch {info['torch']} ({info['torch_threads']} threads "
        f"in the benchmark process), transformers {info['transformers']}, tokenizers {info['tokenizers']}; "
        f"load average at start {info['load_average_at_start']} (a shared machine: compare within this run).",
        "",
        *(["Quick mode: tiny models and a few hundred rows, to keep the harness working; its numbers are "
            "start-up bound and the targets apply to `--full` only. One broker and warm workers are shared by "
            "all tasks here, so `CPU s` of batchformers counts only this process.", ""] if payload["mode"] == "quick"
          else []),
        "| task | method | rows | wall s | CPU s | rows/s | tokens/s | padding | batchformers ÷ this |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in payload["tasks"]:
        if task["skipped"]:
            lines.append(f"| {task['task']} | skipped: {task['skipped']} | | | | | | | |")
            continue
        bf = task["measurements"].get("batchformers")
        engines = [m for m in task["measurements"] if m not in ("baseline", "batchformers", "floor")]
        for method in ("baseline", "batchformers", "floor", *engines):
            m = task["measurements"].get(method)
            if m is None:
                continue
            speed = (m["seconds"] / bf["seconds"]) if bf and method != "batchformers" else None
            label = method
            if method == "batchformers" and "startup_seconds" in m["extra"]:
                extra = m["extra"]
                label += (f" ({extra['workers']:.0f} worker{'s' if extra['workers'] > 1 else ''}; start-up "
                          f"{extra['startup_seconds']:.1f} s, stop {extra['stop_seconds']:.1f} s)")
            if method in engines:
                same = task.get("engine_parity", {}).get(method, {})
                base = task["measurements"].get("baseline")
                vs = f"{base['seconds'] / m['seconds']:.2f}× baseline, " if base and m["seconds"] else ""
                label = (f"batchformers, engine {method} ({vs}{same.get('equal', 0)}/{same.get('rows', 0)} "
                         "outputs identical to baseline)")
            lines.append(
                f"| {task['task']} | {label} | {m['rows']:,} | {_fmt(m['seconds'], 1)} | {_fmt(m['cpu_seconds'], 1)} | "
                f"{_fmt(m['rows_per_second'], 1)} | {_fmt(m['tokens_per_second'], 0)} | "
                f"{_fmt(m['padding'], 2, '×') if m['padding'] else '–'} | {_fmt(speed, 2, '×') if speed else ''} |"
            )
    lines += ["", "| task | target | measured | met | steady-state ÷ floor | outputs equal to baseline |",
              "|---|---|---:|---|---:|---|"]
    for task in payload["tasks"]:
        if task["skipped"]:
            continue
        parity = task["parity"]
        same = f"{parity.get('equal', 0)}/{parity.get('rows', 0)}" if parity else "–"
        for name, target in task["targets"].items():
            steady = task["ratios"]["vs_floor_steady"] if name == "vs_floor" else None
            lines.append(
                f"| {task['task']} | batchformers ÷ {name.removeprefix('vs_')} ≥ {target['target']} | "
                f"{_fmt(target['measured'], 2, '×')} | {'yes' if target['met'] else '**no**'} | "
                f"{_fmt(steady, 2, '×') if steady else ''} | {same} |"
            )
        engine_parity = task.get("engine_parity", {})
        for method, target in task.get("engine_targets", {}).items():
            same = engine_parity.get(method, {})
            lines.append(
                f"| {task['task']} | {method} ÷ baseline ≥ {target['target']} | {_fmt(target['measured'], 2, '×')} | "
                f"{'yes' if target['met'] else '**no**'} | | {same.get('equal', 0)}/{same.get('rows', 0)} |"
            )
    scenarios = payload.get("scenarios", {})
    if "shard_overhead" in scenarios:
        o = scenarios["shard_overhead"]
        lines += ["", f"Fixed cost of a shard (one-row tokenize shards, one warm worker, {o['shards']} shards): "
                      f"**{o['seconds_per_shard'] * 1000:.0f} ms** per shard "
                      f"({o['run_shard_seconds'] * 1000:.0f} ms of it inside `run_shard`)."]
        for task, share in o.get("share_of_default_shard", {}).items():
            lines.append(f"- share of a default shard ({o['default_shard_rows']:,} rows) of {task}: "
                         f"{share * 100:.3f}% (target < {SHARD_OVERHEAD_TARGET * 100:.0f}%: "
                         f"{'met' if share < SHARD_OVERHEAD_TARGET else '**not met**'})")
    if "many_workers" in scenarios:
        w = scenarios["many_workers"]
        lines += ["", f"{w['workers']} workers on one broker, tokenize, {w['rows']:,} rows in {w['shards']} shards: "
                      f"{w['state']} in {w['job_seconds']:.1f} s ({w['seconds']:.1f} s with start and stop); "
                      f"{w['rows_out']:,} rows out, {w['duplicates']} duplicates, {w['missing']} missing, "
                      f"exactly once: {'yes' if w['exactly_once'] else '**no**'}; "
                      f"{w['worker_processes_that_ran_shards']} of {w['workers']} workers ran shards."]
    notes = [f"- {task['task']}: {note}" for task in payload["tasks"] for note in task["notes"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, generated: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated block between the markers (or append one / write a new file holding only it)."""
    block = f"{begin}\n{generated}{end}\n"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            path.write_text(head + block + ("\n" + tail if tail else ""))
            return
        if begin != BEGIN:
            path.write_text(text.rstrip("\n") + "\n\n" + block)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\n" + block)

"""The start-up bench's report: the breakdown table of one ``run`` and the BENCHMARKS.md section."""

from __future__ import annotations

import statistics
from typing import Any

from bench.startup_probes import STEP_NAMES

RUN_ROWS = 50
"""Rows of the job every ``run`` figure runs."""

BREAKDOWN = (
    ("CLI import", "fresh `python -c`: `import producer.cli` + `import producer.run`"),
    ("spec load", "fresh process, `jobs.spec.load_spec` (after the producer's imports)"),
    ("model check", "same process, `producer.model_check.check_model`"),
    ("pin", "same process, `producer.pin.resolve_pin`"),
    ("plan", "same process, `producer.plan.build_manifest`"),
    ("submit (in run)", "instrumented run: `producer.run.submit`"),
    ("Redis start", "instrumented run: `EmbeddedRedis.start`"),
    ("worker start (boot to ready)", "worker spawn to Celery's `ready.` line"),
    ("torch import", "the worker's `imported torch ... (N s)` line, where it logs one"),
    ("model load", "the worker's `loaded ... model ... (N s)` line"),
    ("ready to shard start", "`ready.` line to the later of the `received` and `loaded` lines"),
    ("first shard", "the first commit marker's `seconds`"),
    ("commit", "shard start + its `seconds` to `_SUCCESS`'s `completed_at` (part, marker, count, `_SUCCESS`)"),
    ("complete to stop", "`_SUCCESS` `completed_at` to the first `LocalWorkers.stop` (or `.kill`) call"),
    ("stop", "that call to the end of `EmbeddedRedis.stop`"),
    ("total (instrumented run)", "the instrumented process, start to exit"),
)


def breakdown_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per step: the median over the fresh processes, or why it was not measured."""
    values: dict[str, list[Any]] = {}
    imports = results.get("imports", {})
    for sample in imports.get("samples", []):
        values.setdefault("CLI import", []).append(sample["producer.cli"] + sample["producer.run"])
    for sample in results.get("steps", {}).get("samples", []):
        for name in STEP_NAMES[1:]:
            values.setdefault(name, []).append(sample.get(name, f"not measured: {sample['errors'].get(name)}"))
    runs = results.get("runs_instrumented")
    for run in runs if isinstance(runs, list) else []:
        for name, value in run["steps"].items():
            values.setdefault(name, []).append(value)
    failed = {name: part.get("error") for name, part in (("imports", imports), ("steps", results.get("steps", {})),
                                                           ("runs", runs if isinstance(runs, dict) else {}))}
    source = {"CLI import": "imports", **{name: "steps" for name in STEP_NAMES}}
    rows = []
    for name, how in BREAKDOWN:
        found = values.get(name, [])
        numbers = [v for v in found if isinstance(v, (int, float))]
        reasons = [v for v in found if isinstance(v, str)]
        error = failed[source.get(name, "runs")]
        note = reasons[0] if reasons else f"not measured: {error}" if error else None if numbers else "not measured"
        rows.append({"step": name, "how": how, "median": statistics.median(numbers) if numbers else None,
                     "samples": numbers, "note": note})
    return rows


def _seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _met_text(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = ["## Start-up and fixed costs (`python -m bench --startup`)", "",
             f"Run {results['date']}{' (--quick)' if results['quick'] else ''} on {results['cores']} cores: "
             f"each figure is the median of {runs} fresh process{'es' if runs > 1 else ''}; `load` is the load "
             f"average (1 min) before and after it (whole bench: {results['load_start']:.2f} -> "
             f"{results['load_end']:.2f}).", "",
             "| command | median s | target s | met | runs | load |", "|---|---:|---:|---|---:|---|"]
    for f in results["figures"]:
        median = _seconds_text(f["median"]) if not f.get("error") else f"not measured: {f['error']}"
        lines.append(f"| {f['label']} | {median} | {_seconds_text(f['target'])} | {_met_text(f['met'])} | "
                     f"{len(f['samples'])} | {f['load'][0]:.2f}-{f['load'][-1]:.2f} |")
    lines += ["", f"### Where `batchformers run` spends its time ({RUN_ROWS} rows, one worker)", "",
              "| step | median s | how it is measured |", "|---|---:|---|"]
    for row in results["breakdown"]:
        shown = _seconds_text(row["median"]) if row["median"] is not None else row["note"]
        lines.append(f"| {row['step']} | {shown} | {row['how']} |")
    imports = results.get("imports", {})
    if imports.get("samples"):
        heavy = sorted({m for s in imports["samples"] for m in s["heavy"]})
        lines += ["", f"Heavy modules loaded by `import producer.cli` + `producer.run`: "
                  f"{', '.join(heavy) or 'none'}. The heaviest entries of `import producer.cli`'s import tree "
                  "(`-X importtime`, one process; cumulative, so nested entries are counted in their parents): "
                  + ", ".join(f"{e['module']} {e['seconds']:.2f} s" for e in imports["heaviest"]) + "."]
    steps = [s for s in results.get("steps", {}).get("samples", []) if "producer imports" in s]
    if steps:
        lines += ["", f"The producer steps' process imported their modules in "
                  f"{statistics.median(s['producer imports'] for s in steps):.2f} s (median) and held "
                  f"{', '.join(sorted({m for s in steps for m in s['heavy']})) or 'no heavy module'} afterwards."]
    if results.get("status_in_process"):
        s = results["status_in_process"]
        lines += ["", f"`status` in process (the function the CLI calls) at {s['shards']:,} shards: "
                  f"{s['status_seconds']:.2f} s from the ledger, {s['without_broker_seconds']:.2f} s from the markers."]
    lines += ["", "### Other measurements of issue 21", "", "| measurement | value | target | met |", "|---|---:|---:|---|"]
    for key, hook in results["hooks"].items():
        if hook.get("error"):
            lines.append(f"| {key} (`{hook['module']}`) | {hook['error']} | - | - |")
            continue
        for f in hook["figures"]:
            unit = f" {f['unit']}" if f.get("unit") else ""
            value = "-" if f.get("value") is None else f"{f['value']:.3g}{unit}"
            target = "-" if f.get("target") is None else f"{'>=' if f.get('better') == 'higher' else '<='} {f['target']:.3g}{unit}"
            note = f" ({f['note']})" if f.get("note") else ""
            lines.append(f"| {f['name']}{note} | {value} | {target} | {_met_text(f['met'])} |")
    return "\n".join(lines) + "\n"

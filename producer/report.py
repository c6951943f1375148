"""``batchformers report OUTPUT``: one self-contained HTML page (plotly.js inlined, opens offline) of a job.

The charts: shards per worker over time (one lane per worker), rows/s and tokens/s over time,
where the time went (stage seconds summed), padding per shard, the slowest shards with their
row lengths, model loads, retries and failures, and rows in error by kind. ``--png DIR`` also
writes each chart as a PNG (plotly's exporter, kaleido, on the local Chrome/Chromium).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.report_data import ReportData, gather

THROUGHPUT_BINS = 40
PNG_WIDTH = 1100
LOAD_COLOUR = "#bbbbbb"


@dataclass(frozen=True)
class Report:
    path: str
    data: ReportData
    pngs: list[str]


def write_report(output: str, out: str | None = None, png_dir: str | None = None) -> Report:
    """Gather the job at ``output`` and write its page to ``out`` (default ``report-<job id>.html`` here)."""
    data = gather(output)
    figures = charts(data)
    path = Path(out or f"report-{data.job_id}.html")
    path.write_text(page(data, figures), encoding="utf-8")
    pngs: list[str] = []
    if png_dir:
        import plotly.io as pio

        folder = Path(png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        pngs = [str(folder / f"{name}.png") for name in figures]
        pio.write_images(list(figures.values()), pngs, width=PNG_WIDTH)  # one browser for every chart
    return Report(str(path), data, pngs)


def charts(data: ReportData) -> dict[str, Any]:
    """Chart name -> plotly figure."""
    import plotly.graph_objects as go

    origin = min((run.start for run in data.runs), default=0.0)
    figures: dict[str, Any] = {}
    workers = data.workers
    timeline = go.Figure()
    for worker in workers:
        runs = [run for run in data.runs if run.worker == worker]
        timeline.add_trace(go.Bar(
            name=worker, orientation="h", y=[worker] * len(runs), base=[run.start - origin for run in runs],
            x=[run.seconds for run in runs], text=[f"shard {run.shard}" for run in runs], textposition="none",
            hovertemplate="%{text}: %{x:.2f}s from %{base:.2f}s<extra>%{y}</extra>"))
    loads = [run for run in data.runs if run.model_load_seconds]
    timeline.add_trace(go.Bar(  # drawn over the start of the shards that loaded the model
        name="model load", orientation="h", y=[run.worker for run in loads], base=[run.start - origin for run in loads],
        x=[run.model_load_seconds for run in loads], marker_color=LOAD_COLOUR, width=0.4,
        hovertemplate="model load: %{x:.2f}s<extra>%{y}</extra>"))
    timeline.update_layout(title="Shards per worker (grey: the model load a shard paid)", xaxis_title="seconds since the first shard started",
                           barmode="overlay", showlegend=False, height=max(260, 80 + 50 * len(workers)))
    timeline.update_yaxes(categoryorder="array", categoryarray=workers)
    figures["timeline"] = timeline

    from plotly.subplots import make_subplots

    times, rows_rate, tokens_rate = throughput(data, origin)
    rates = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("rows/s", "tokens/s"))
    rates.add_trace(go.Scatter(x=times, y=rows_rate, name="rows/s", mode="lines"), row=1, col=1)
    rates.add_trace(go.Scatter(x=times, y=tokens_rate, name="tokens/s", mode="lines"), row=2, col=1)
    rates.update_layout(title="Throughput (each shard's rows over its own work, model loads left out)",
                        showlegend=False, height=480)
    rates.update_xaxes(title_text="seconds since the first shard started", row=2, col=1)
    figures["throughput"] = rates

    stages = data.stage_totals()
    figures["stages"] = go.Figure(go.Bar(x=list(stages), y=list(stages.values())))
    figures["stages"].update_layout(title="Where the time went (seconds, summed over shards)")

    padded = [run for run in data.runs if run.padding_ratio is not None]
    figures["padding"] = go.Figure(go.Bar(x=[str(run.shard) for run in padded],
                                          y=[run.padding_ratio for run in padded]))
    figures["padding"].update_layout(title="Padding per shard (share of padded tokens)", xaxis_title="shard",
                                     yaxis={"range": [0, 1]})

    slow = data.stragglers
    figures["stragglers"] = go.Figure(go.Bar(x=[f"shard {s.shard}" for s in slow], y=[s.seconds for s in slow],
                                             text=[_profile(s.lengths) for s in slow]))
    figures["stragglers"].update_layout(title="Slowest shards (seconds; characters per row)")

    kinds = data.error_kinds
    figures["errors"] = go.Figure(go.Bar(x=list(kinds.values()), y=list(kinds), orientation="h"))
    figures["errors"].update_layout(title=f"Rows in error by kind ({sum(kinds.values())}); "
                                    f"truncated rows: {data.totals()['truncated']}")
    return figures


def throughput(data: ReportData, origin: float) -> tuple[list[float], list[float], list[float]]:
    """Rows/s and tokens/s over time, each shard's rows spread evenly over its work (the end of its run)."""
    end = max((run.end for run in data.runs), default=origin)
    span = max(end - origin, 1e-6)
    width = span / THROUGHPUT_BINS
    rows = [0.0] * THROUGHPUT_BINS
    tokens = [0.0] * THROUGHPUT_BINS
    for run in data.runs:
        stop = run.end - origin
        start = min(stop - 1e-6, max(run.start - origin, stop - run.work_seconds))
        for index in range(THROUGHPUT_BINS):
            low, high = index * width, (index + 1) * width
            share = max(0.0, min(stop, high) - max(start, low)) / (stop - start)
            rows[index] += run.rows * share / width
            tokens[index] += (run.tokens or 0) * share / width
    return [round((i + 0.5) * width, 3) for i in range(THROUGHPUT_BINS)], rows, tokens


def _profile(lengths: dict[str, int] | None) -> str:
    if not lengths:
        return "input not readable"
    return " / ".join(f"{key} {value}" for key, value in lengths.items())


def page(data: ReportData, figures: dict[str, Any]) -> str:
    """The whole page: plotly.js once, each chart in its own div (``chart-<name>``), then the tables."""
    from plotly.offline import get_plotlyjs

    totals = data.totals()
    divs = "\n".join(figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}")
                     for name, figure in figures.items())
    state = ("complete" if data.complete else f"failed: {data.failure}" if data.failure
             else f"{totals['committed']} of {data.shards} shards committed so far")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>batchformers report: {_e(data.job_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>Job {_e(data.job_id)}</h1>
<p>{_e(data.task)} with {_e(data.model)} &rarr; {_e(data.output)}: {_e(state)}</p>
<table id="totals"><tr>{"".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in totals)}</tr>
<tr>{"".join(f'<td data-key="{_e(k)}">{v}</td>' for k, v in totals.items())}</tr></table>
{divs}
<h2>Slowest shards</h2>{_table("stragglers", ["shard", "seconds", "rows", "characters per row"],
                                [[s.shard, s.seconds, s.rows, _profile(s.lengths)] for s in data.stragglers])}
<h2>Model loads</h2>{_table("model-loads", ["shard", "worker", "seconds"],
                             [[r.shard, r.worker, r.model_load_seconds] for r in data.runs
                              if r.model_load_seconds is not None])}
<h2>Retried shards</h2>{_table("retries", ["shard", "attempt", "worker"],
                                [[r.shard, r.attempt, r.worker] for r in data.runs if r.attempt > 1])}
<h2>Failed shards</h2>{_table("failures", ["shard", "attempts", "error"],
                               [[s, f.get("attempts"), f.get("error")] for s, f in sorted(data.failures.items())])}
<h2>Rows in error by kind</h2>{_table("error-kinds", ["kind", "rows"], [[k, n] for k, n in data.error_kinds.items()])}
<h2>Shards</h2>{_table("shards", ["shard", "worker", "start", "seconds", "rows", "errors", "truncated", "padding",
                                  "stages"],
                       [[r.shard, r.worker, round(r.start, 3), round(r.seconds, 3), r.rows, r.errors, r.truncated,
                         "" if r.padding_ratio is None else round(r.padding_ratio, 3), json.dumps(r.stages)]
                        for r in data.runs])}
</body></html>
"""


def _table(name: str, header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f'<p id="{name}">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f'<table id="{name}"><tr>{head}</tr>{body}</table>'


def _e(value: Any) -> str:
    return html.escape(str(value))

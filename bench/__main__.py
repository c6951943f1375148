"""``python -m bench``: run the benchmarks and write the report.

    python -m bench --quick                       # tiny models, a few hundred rows (CI)
    python -m bench --full                        # base-sized models; writes BENCHMARKS.md
    python -m bench --quick --tasks ner,tokenize --no-scenarios
    python -m bench --host                        # host path vs raw tokenizer, device time hidden
    python -m bench --host --quick                # the same on a few hundred rows (CI)
    python -m bench --scale                       # many shards and many input files on a local S3 server
    python -m bench --scale --scale-shards 400 --scale-files 1000,10000
    python -m bench --routing                     # two jobs on two models: FIFO vs model-affine routing
    python -m bench --routing --routing-model base
    python -m bench --startup                     # run, submit, status, jobs, --help, demo: fixed costs
    python -m bench --startup --quick             # one process each, no demo (CI: checks the bench works)
    python -m bench --engines --rows 64           # encoder tasks: transformers vs onnxruntime fp32 / int8
    python -m bench --tail                        # stragglers, SIGTERM mid-shard, cold-start spread
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import markdown, write_json, write_markdown
from bench.run import run_benchmarks
from bench.tasks import BENCHES

ROOT = Path(__file__).resolve().parents[1]
HOST_BEGIN = "<!-- bench --host: generated, do not edit by hand -->"
HOST_END = "<!-- end of bench --host -->"
STARTUP_BEGIN = "<!-- bench --startup: generated, do not edit by hand -->"
STARTUP_END = "<!-- end of bench --startup -->"
ROUTING_BEGIN = "<!-- bench --routing --routing-model {}: generated, do not edit by hand -->"
ROUTING_END = "<!-- end of bench --routing --routing-model {} -->"
TAIL_BEGIN = "<!-- bench --tail: generated, do not edit by hand -->"
TAIL_END = "<!-- end of bench --tail -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="tiny models (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="base-sized models")
    parser.add_argument("--host", action="store_true",
                        help="near-free models: host path speed and simulated device time hidden (bench/host.py)")
    mode.add_argument("--scale", action="store_const", dest="mode", const="scale",
                      help="per-shard cost vs number of shards, status and submit time, on a local moto S3 server")
    parser.add_argument("--routing", action="store_true",
                        help="two concurrent jobs on two models, routing off (FIFO) then on (bench/routing.py)")
    parser.add_argument("--tail", action="store_true",
                        help="issue 24: stragglers, SIGTERM mid-shard (pieces on/off), cold-start spread")
    parser.add_argument("--startup", action="store_true",
                        help="start-up and fixed costs of run, submit, status, jobs, --help, demo (bench/startup.py)")
    parser.add_argument("--startup-runs", type=int,
                        help="--startup: fresh processes per figure (default 5; 1 with --quick)")
    parser.add_argument("--engines", action="store_true",
                        help="the encoder tasks on transformers vs onnxruntime float32 and int8 (bench/engines.py)")
    parser.add_argument("--engine-cases", default="", help="--engines: comma-separated case prefixes (default: all)")
    parser.add_argument("--routing-model", choices=("tiny", "base"), default="tiny", help="--routing: model sizes")
    parser.add_argument("--tasks", default=",".join(BENCHES), help=f"comma-separated, from {', '.join(BENCHES)}")
    parser.add_argument("--workers", type=int,
                        help="local worker processes for batchformers (default: one per core; 1 with --quick)")
    parser.add_argument("--rows", type=int, help="override the rows of every task")
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench", help="models, data and job outputs")
    parser.add_argument("--markdown", type=Path, help="report file (default: BENCHMARKS.md for --full, "
                                                      "WORKDIR/BENCHMARKS-quick.md for --quick)")
    parser.add_argument("--json", type=Path, help="JSON results (default: bench/results/full.json for --full, "
                                                  "else next to the Markdown)")
    parser.add_argument("--no-scenarios", action="store_true", help="skip shard overhead and many workers")
    parser.add_argument("--many-workers", type=int, default=16, help="workers in the many-workers scenario (0: skip)")
    parser.add_argument("--scale-shards", default="400,2000", help="--scale: one-row-shard jobs to run")
    parser.add_argument("--scale-files", default="1000", help="--scale: input-file counts to submit")
    parser.add_argument("--scale-status", default="5000", help="--scale: marker counts at which to time status")
    parser.add_argument("--scale-local", default="", help="--scale: one-row-shard jobs to run on local disk")
    args = parser.parse_args(argv)
    mode_name = args.mode or "quick"
    if mode_name == "scale":
        return _scale(args)
    if args.routing:
        return _routing(args)
    if args.startup:
        return _startup(args)
    if args.engines:
        from bench import engines

        workdir = args.workdir / "engines"
        workdir.mkdir(parents=True, exist_ok=True)
        only = tuple(c.strip() for c in args.engine_cases.split(",") if c.strip())
        return engines.main(workdir, args.rows or 128, only, args.json, args.markdown,
                            lambda message: print(message, file=sys.stderr, flush=True))
    if args.tail:
        return _tail(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in BENCHES]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; valid: {', '.join(BENCHES)}")
    markdown_path = args.markdown or (ROOT / "BENCHMARKS.md" if mode_name == "full"
                                      else args.workdir / "BENCHMARKS-quick.md")
    json_path = args.json or (ROOT / "bench" / "results" / "full.json" if args.markdown is None and mode_name == "full"
                              else markdown_path.with_suffix(".json"))

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    if args.host:
        return _host(args, tasks, log)
    workers = args.workers or (1 if mode_name == "quick" else os.cpu_count() or 1)
    payload = run_benchmarks(mode_name, tasks, args.workdir, workers, args.rows,
                             with_scenarios=not args.no_scenarios, many_workers=args.many_workers, log=log)
    write_json(json_path, payload)
    generated = markdown(payload)
    write_markdown(markdown_path, generated)
    print(generated)
    log(f"wrote {markdown_path} and {json_path}")
    return 0


def _host(args: argparse.Namespace, tasks: list[str], log: Any) -> int:
    from bench.host import markdown as host_markdown
    from bench.host import run_host

    quick = args.mode == "quick"
    results = run_host(quick, args.workdir, tasks, log)
    json_path = args.json or (args.workdir / "host-quick.json" if quick else ROOT / "bench" / "results" / "host.json")
    write_json(json_path, results)
    generated = host_markdown(results)
    markdown_path = args.markdown or (args.workdir / "BENCHMARKS-host-quick.md" if quick else ROOT / "BENCHMARKS.md")
    write_markdown(markdown_path, generated, HOST_BEGIN, HOST_END)
    print(generated)
    log(f"wrote {markdown_path} and {json_path}")
    return 0


def _startup(args: argparse.Namespace) -> int:
    from bench import startup, startup_report

    quick = args.mode == "quick"
    results = startup.run_startup(args.workdir / "startup", quick=quick, runs=args.startup_runs)
    json_path = args.json or (args.workdir / "startup-quick.json" if quick else ROOT / "bench" / "results" / "startup.json")
    write_json(json_path, results)
    generated = startup_report.markdown(results)
    markdown_path = args.markdown or (args.workdir / "BENCHMARKS-startup-quick.md" if quick else ROOT / "BENCHMARKS.md")
    write_markdown(markdown_path, generated, STARTUP_BEGIN, STARTUP_END)
    print(generated)
    print(f"wrote {markdown_path} and {json_path}", file=sys.stderr)
    return 0


def _routing(args: argparse.Namespace) -> int:
    from bench import routing

    results = routing.run_routing(args.workdir, args.routing_model, workers=args.workers or 2)
    json_path = args.json or ROOT / "bench" / "results" / f"routing-{args.routing_model}.json"
    write_json(json_path, results)
    generated = routing.markdown(results)
    markdown_path = args.markdown or ROOT / "BENCHMARKS.md"
    write_markdown(markdown_path, generated, ROUTING_BEGIN.format(args.routing_model),
                   ROUTING_END.format(args.routing_model))
    print(generated)
    print(f"wrote {markdown_path} and {json_path}", file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from bench import tail

    results = tail.run_tail(args.workdir, workers=args.workers or 4)
    json_path = args.json or ROOT / "bench" / "results" / "tail.json"
    write_json(json_path, results)
    generated = tail.markdown(results)
    markdown_path = args.markdown or ROOT / "BENCHMARKS.md"
    write_markdown(markdown_path, generated, TAIL_BEGIN, TAIL_END)
    print(generated)
    print(f"wrote {markdown_path} and {json_path}", file=sys.stderr)
    return 0


def _scale(args: argparse.Namespace) -> int:
    from bench import scale

    def counts(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x.strip())

    results = scale.run_scale(args.workdir, counts(args.scale_shards), counts(args.scale_files),
                              counts(args.scale_status), counts(args.scale_local))
    json_path = args.json or ROOT / "bench" / "results" / "scale.json"
    write_json(json_path, results)
    print(scale.markdown(results))
    print(f"wrote {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

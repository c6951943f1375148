"""``batchformers demo``: run the example NER job end to end and show its Parquet output.

With the model hub reachable it uses the real default checkpoint; offline it
builds a tiny model locally (random weights: the entities are meaningless) and
says so plainly.

pyarrow comes in only when needed (writing a missing input, showing the output after the run):
imported first, with the pandas that ``pyarrow.dataset`` brings, it delayed the run's start by a second.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.spec import load_spec

if TYPE_CHECKING:
    import pyarrow as pa

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = Path(__file__).resolve().parents[1] / "jobs" / "testing" / "data" / "news_sentences.txt"
# The same tiny model, committed with the tests: a checkout's demo starts without building one (seconds
# of transformers import and tokenizer training); an installed package builds it once into the workdir.
COMMITTED_MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "bert-ner"
HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def demo_input(workdir: Path) -> Path:
    """The example news dataset as Parquet (written from the packaged sentences if missing)."""
    committed = EXAMPLES / "data" / "news.parquet"
    if committed.exists():
        return committed
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = workdir / "news.parquet"
    lines = [line for line in SENTENCES.read_text().splitlines() if line.strip()]
    pq.write_table(pa.table({"doc_id": [f"news-{i:03d}" for i in range(len(lines))], "body": lines}), path)
    return path


def offline_model(workdir: Path) -> Path:
    """The tiny NER model: the committed one when this is a checkout, else built into ``workdir``."""
    if (COMMITTED_MODEL / "config.json").is_file():
        return COMMITTED_MODEL
    from jobs.testing.tiny import build_tiny_model

    return build_tiny_model("bert-ner", workdir / "models" / "bert-ner")


def main(workdir: str = ".demo", workers: int = 1) -> int:
    from producer.run import run

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    spec_file = EXAMPLES / "ner.yaml"
    overrides: dict[str, str] = {"input": str(demo_input(root))}
    if hub_reachable():
        print("model hub reachable: using the default checkpoint of examples/ner.yaml")
    else:
        model = offline_model(root)
        overrides["model"] = str(model)
        print("OFFLINE: the model hub is not reachable, so this demo uses a tiny NER model built locally "
              f"from a config ({model}).\nIts weights are random: the pipeline runs for real, the entities "
              "it finds are meaningless.")
    output = root / f"out-{int(time.time())}"
    spec = load_spec(spec_file, output=str(output), **overrides)
    started = time.monotonic()
    status = run(spec, workers=workers)
    seconds = time.monotonic() - started
    print(f"\njob {status.job_id}: {status.state}; {status.rows_done} rows in {seconds:.1f}s end to end "
          f"({status.rows_done / seconds:.1f} rows/s including start-up; "
          f"{status.rows_per_second or 0:.1f} rows/s in the workers)")
    table = output_table(output)
    print(f"output: {output}  ({len(list(output.glob('part-*.parquet')))} Parquet parts, {table.num_rows} rows)")
    print(table.schema)
    for row in table.slice(0, 3).to_pylist():
        entities = ", ".join(f"{e['word']}/{e['entity_group']}" for e in (row["entities"] or [])[:6])
        print(f"  {row['doc_id']}: {entities} ...")
    return 0 if status.state == "complete" else 1


def output_table(output: Path) -> pa.Table:
    """The job's parts in row order (part names sort so), read without ``pyarrow.dataset`` (and pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(part) for part in sorted(output.glob("part-*.parquet"))],
                            promote_options="default")

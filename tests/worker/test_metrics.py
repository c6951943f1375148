"""Prometheus metrics: scrape a real worker's endpoint after a real job."""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

from jobs.settings import Settings
from jobs.spec import load_spec
from producer.submit import submit
from producer.watch import wait
from tests.ports import serve_on_a_free_port


def _scrape(port: int, timeout: float = 60) -> dict[str, float]:
    """Samples by ``name{label="value",...}``, once the endpoint answers."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on ``port`` at, from the kernel's table (/proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


def test_worker_serves_metrics(tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings,
                               start_workers: Any) -> None:
    def start(port: int) -> tuple[int, Any]:
        workers = start_workers(1, BATCHFORMERS_METRICS_PORT=str(port))
        return workers.pids[0], workers.stop

    port = serve_on_a_free_port(start)
    before = _scrape(port)  # served by the main process before any shard ran
    assert _listening_addresses(port) == {"127.0.0.1"}  # by default this machine only
    assert not any(name.startswith("batchformers_rows_total") for name in before)

    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(news_parquet),
                      "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": 33,
                      "batch_size": 8})
    submission = submit(spec, settings)
    assert wait(submission.output, timeout=120).state == "complete"

    samples = _scrape(port)
    assert samples['batchformers_rows_total{task="ner"}'] == 66
    assert samples['batchformers_row_errors_total{task="ner"}'] == 0
    assert samples['batchformers_shards_total{outcome="committed",task="ner"}'] == 2
    assert samples['batchformers_shard_seconds_count{task="ner"}'] == 2
    batches = samples["batchformers_batches_total{}"]
    assert batches >= 66 / 8  # batch_size 8: at least 9 batches over the two shards
    assert samples["batchformers_batch_seconds_count{}"] == batches
    assert samples["batchformers_batch_rows_total{}"] >= 66
    assert samples['batchformers_batch_tokens_total{kind="padded"}'] >= samples[
        'batchformers_batch_tokens_total{kind="real"}'] > 0
    assert samples["batchformers_padding_ratio_count{}"] == batches
    assert samples['batchformers_model_loads_total{task="ner"}'] == 1  # one load serves both shards
    assert samples['batchformers_model_load_seconds_count{task="ner"}'] == 1
    # CPU worker: no GPU memory series, and that is not an error.
    assert not any(name.startswith("batchformers_gpu_memory_bytes") for name in samples)

"""``python -m bench.gpu``: the task engine on a GPU (run by ``bench/gpu.sh`` through the device tool).

NER on a BERT-large shape (24 x 1024, random weights, MiniLM vocabulary, bf16) and translation on
an opus-mt-en-de shape (6+6 x 512), with overlap on and off. Reported per case: tokens/s, the
forward's share of wall time (the GPU busy share: each batch's forward ends in a device sync),
and MFU against the GPU's dense bf16 peak (``--peak-tflops``, 989 for H100/H200 SXM).
Target: NER forward busy >= 80% of wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.data import sentence_rows, text_rows
from bench.models import COMPLETE, _bert_tokenizer, build_translation
from jobs.engine.base import RunOptions

NER_ROWS = 40_000
TRANSLATION_ROWS = 4_000


def build_bert_large_ner(directory: Path) -> Path:
    if (directory / COMPLETE).exists():
        return directory
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from jobs.testing.tiny.encoders import NER_LABELS

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=512, num_labels=len(NER_LABELS),
                        id2label=dict(enumerate(NER_LABELS)), label2id={k: i for i, k in enumerate(NER_LABELS)})
    BertForTokenClassification(config).save_pretrained(directory)
    _bert_tokenizer().save_pretrained(directory)
    (directory / COMPLETE).write_text("ner\n")
    return directory


def build_opus_mt(directory: Path) -> Path:
    if not (directory / COMPLETE).exists():
        directory.mkdir(parents=True, exist_ok=True)
        build_translation(directory)
        (directory / COMPLETE).write_text("translation\n")
    return directory


def encoder_flops(config: Any, real_tokens: int, padded_tokens: int, mean_length: float) -> float:
    """Forward FLOPs of a BERT-shaped encoder: 2 x weights x tokens, plus attention (4 x L x d x seq)."""
    layers, hidden, inner = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    per_token = layers * (2 * (4 * hidden * hidden + 2 * hidden * inner)) + 2 * hidden * config.num_labels
    attention = layers * 4 * hidden * mean_length
    return float(padded_tokens * (per_token + attention))


def seq2seq_flops(config: Any, input_tokens: int, output_tokens: int) -> float:
    """2 x weights per encoder token and per generated token (decoder and output layer), without attention."""
    d, ffn = config.d_model, config.encoder_ffn_dim
    encoder = config.encoder_layers * 2 * (4 * d * d + 2 * d * ffn)
    decoder = config.decoder_layers * 2 * (8 * d * d + 2 * d * ffn) + 2 * d * config.vocab_size
    return float(input_tokens * encoder + output_tokens * decoder)


def measure(task: str, model_dir: Path, texts: list[str], params: dict[str, Any], batch_size: int,
            peak: float, device: str = "cuda") -> list[dict[str, Any]]:
    import torch

    from jobs.engine.base import LoadOptions
    from jobs.tasks.registry import get_task_class

    runner: Any = get_task_class(task).from_params(params).load(
        LoadOptions(model=str(model_dir), device=device, dtype="auto"))
    runner.run_table({"text": texts[:256]}, options=RunOptions(batch_size=batch_size))  # warm up
    results = []
    for overlap in (False, True):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        table, times = runner.run_table({"text": texts}, options=RunOptions(batch_size=batch_size, overlap=overlap))
        wall = time.perf_counter() - started
        if task == "ner":
            flops = encoder_flops(runner.model.config, times.tokens, times.padded_tokens, times.padded_tokens / max(1, times.items))
            output_tokens = 0
        else:
            column = table.column("translation_text").to_pylist()
            output_tokens = sum(len(ids) for ids in runner.tokenizer(column)["input_ids"])
            flops = seq2seq_flops(runner.model.config, times.tokens, output_tokens) * max(1, params.get("num_beams", 1))
        results.append({
            "task": task, "overlap": overlap, "rows": len(texts), "tokens": times.tokens, "padded_tokens": times.padded_tokens,
            "output_tokens": output_tokens, "wall_seconds": wall, "forward_seconds": times.forward_seconds,
            "tokens_per_second": times.tokens / wall, "forward_share": times.forward_seconds / wall,
            "mfu": flops / wall / (peak * 1e12), "dtype": str(runner.model.dtype),
            "errors": table.num_rows - table.column("error").null_count,
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/batchformers-gpu"))
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--ner-rows", type=int, default=NER_ROWS)
    parser.add_argument("--translation-rows", type=int, default=TRANSLATION_ROWS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (tests)")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error("no CUDA device: run this on a GPU machine (bench/gpu.sh)")
    gpu = torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu (dry run)"
    print(f"GPU: {gpu}; torch {torch.__version__}", flush=True)
    results = measure("ner", build_bert_large_ner(args.workdir / "bert-large-ner"), text_rows(args.ner_rows),
                      {"aggregation_strategy": "simple"}, args.batch_size, args.peak_tflops, args.device)
    results += measure("translation", build_opus_mt(args.workdir / "opus-mt"), sentence_rows(args.translation_rows),
                       {"num_beams": 4, "max_new_tokens": 64}, 64, args.peak_tflops, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "results": results},
                                                  indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

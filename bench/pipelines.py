"""Benchmarks of the pipeline tasks: classification, zero-shot, embeddings, fill-mask, generation.

Baseline: what a user writes today, ``transformers.pipeline(TASK, batch_size=B)`` over a
``datasets`` column (``KeyDataset``), the same batch size as the job. For embeddings the
pipeline is ``feature-extraction`` followed by the mean pooling and normalisation a user
adds in numpy. The floor is the model's forward passes alone over the worker's batches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from bench import baselines, data
from bench.measure import Measurement, clock
from bench.task_base import Prepared, Size, TaskBench, close

ZERO_SHOT_LABELS = ["economy", "politics", "weather", "technology", "sport"]
VECTOR_TOLERANCE = 1e-4


def _pipeline_over_dataset(task: str, model_dir: str, texts: list[str], batch_size: int,
                           **call: Any) -> list[Any]:
    import datasets
    from transformers import pipeline
    from transformers.pipelines.pt_utils import KeyDataset

    with baselines.tokenizers_parallelism_kept():
        pipe: Any = pipeline(task, model=model_dir, device="cpu")  # type: ignore[call-overload]
        if pipe.tokenizer.pad_token_id is None:  # GPT-2: what users set to batch it
            pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
        dataset = datasets.Dataset.from_dict({"text": texts})
        return list(pipe(KeyDataset(dataset, "text"), batch_size=batch_size, **call))


class PipelineBench(TaskBench):
    """Shared parts: rows, the pipeline baseline, the floor over the worker's length-sorted batches."""

    pipeline_task: ClassVar[str]
    auto_class: ClassVar[str]
    call: ClassVar[dict[str, Any]] = {}

    def make_rows(self) -> dict[str, list[str]]:
        return {"text": data.text_rows(self.size.rows, self.seed)}

    def tokenize(self, tokenizer: Any, texts: list[str]) -> list[dict[str, list[int]]]:
        encoded = tokenizer(texts, truncation=True)
        names = [n for n in ("input_ids", "token_type_ids") if n in encoded]
        return [{name: encoded[name][i] for name in names} for i in range(len(texts))]

    def prepare(self, rows: dict[str, list[str]]) -> Prepared:
        from transformers import AutoTokenizer

        features = self.tokenize(AutoTokenizer.from_pretrained(self.model_dir), rows["text"])
        per_row = len(features) // len(rows["text"])
        row_of = [i // per_row for i in range(len(features))]
        return Prepared(features, [row // self.size.shard_rows for row in row_of], row_of)

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        prepared = self.prepare(rows)
        with clock() as timing:
            outputs = self.postprocess(_pipeline_over_dataset(self.pipeline_task, self.model_dir, rows["text"],
                                                              self.size.batch_size, **self.call))
        measurement = Measurement("baseline", timing.seconds, timing.cpu_seconds, len(outputs), prepared.tokens,
                                  self._input_order_padding(prepared))
        return measurement, outputs

    def postprocess(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        names = tuple(n for n in ("input_ids", "token_type_ids") if n in tokenizer.model_input_names)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return self.timed_floor(self.prepare(rows), self.auto_class, names, pad_id or 0, self.floor_generate())

    def floor_generate(self) -> dict[str, Any] | None:
        return None


class ClassificationBench(PipelineBench):
    name = "classification"
    pipeline_task = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    call = {"truncation": True}
    sizes = {"quick": Size(rows=160, batch_size=16, shard_rows=80),
             "full": Size(rows=2000, batch_size=32, shard_rows=500)}

    def postprocess(self, outputs: list[Any]) -> list[Any]:
        return [out[0] if isinstance(out, list) else out for out in outputs]

    def outputs(self, table: pa.Table) -> list[Any]:
        return [{"label": label, "score": score} for label, score in
                zip(table.column("label").to_pylist(), table.column("score").to_pylist(), strict=True)]

    def same(self, expected: Any, got: Any) -> bool:
        return bool(expected["label"] == got["label"] and close(expected["score"], got["score"]))


class ZeroShotBench(PipelineBench):
    name = "zero_shot"
    pipeline_task = "zero-shot-classification"
    auto_class = "AutoModelForSequenceClassification"
    call = {"candidate_labels": ZERO_SHOT_LABELS}
    sizes = {"quick": Size(rows=48, batch_size=16, shard_rows=24),
             "full": Size(rows=300, batch_size=32, shard_rows=75)}

    def params(self) -> dict[str, Any]:
        return {"candidate_labels": ZERO_SHOT_LABELS}

    def tokenize(self, tokenizer: Any, texts: list[str]) -> list[dict[str, list[int]]]:
        hypotheses = [f"This example is {label}." for label in ZERO_SHOT_LABELS]
        premises = [text for text in texts for _ in hypotheses]
        encoded = tokenizer(premises, hypotheses * len(texts), truncation="only_first")
        names = [n for n in ("input_ids", "token_type_ids") if n in encoded]
        return [{name: encoded[name][i] for name in names} for i in range(len(premises))]

    def outputs(self, table: pa.Table) -> list[Any]:
        return [{"labels": labels, "scores": scores} for labels, scores in
                zip(table.column("labels").to_pylist(), table.column("scores").to_pylist(), strict=True)]

    def same(self, expected: Any, got: Any) -> bool:
        return bool(expected["labels"] == got["labels"]
                    and all(close(a, b) for a, b in zip(expected["scores"], got["scores"], strict=True)))


class EmbeddingsBench(PipelineBench):
    name = "embeddings"
    pipeline_task = "feature-extraction"
    auto_class = "AutoModel"
    call = {"truncation": True}
    sizes = {"quick": Size(rows=160, batch_size=16, shard_rows=80),
             "full": Size(rows=2000, batch_size=32, shard_rows=500)}

    def params(self) -> dict[str, Any]:
        # the pipeline cuts at the tokenizer's limit, not at a sentence-transformers max_seq_length
        return {"pooling": "mean", "normalize": True, "max_length": 512}

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._texts = rows["text"]
        self._count = lambda text: len(tokenizer(text, truncation=True)["input_ids"])
        return super().baseline(rows)

    def postprocess(self, outputs: list[Any]) -> list[Any]:
        """What a user adds: batched outputs come padded, so cut each row to its own tokens, average,
        scale to unit length."""
        vectors = []
        for text, out in zip(self._texts, outputs, strict=True):
            mean = np.asarray(out[0][: self._count(text)], dtype=np.float32).mean(axis=0)
            vectors.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        return vectors

    def outputs(self, table: pa.Table) -> list[Any]:
        return [np.asarray(v, dtype=np.float32) for v in table.column("embedding").to_pylist()]

    def same(self, expected: Any, got: Any) -> bool:
        return bool(np.abs(np.asarray(expected) - np.asarray(got)).max() < VECTOR_TOLERANCE)


class FillMaskBench(PipelineBench):
    name = "fill_mask"
    pipeline_task = "fill-mask"
    auto_class = "AutoModelForMaskedLM"
    call = {"top_k": 5, "tokenizer_kwargs": {"truncation": True}}
    sizes = {"quick": Size(rows=80, batch_size=16, shard_rows=40),
             "full": Size(rows=1000, batch_size=32, shard_rows=250)}

    def make_rows(self) -> dict[str, list[str]]:
        from transformers import AutoTokenizer

        mask = AutoTokenizer.from_pretrained(self.model_dir).mask_token
        texts = []
        for text in data.text_rows(self.size.rows, self.seed):
            words = text.split()
            words[min(2, len(words) - 1)] = mask
            texts.append(" ".join(words))
        return {"text": texts}

    def outputs(self, table: pa.Table) -> list[Any]:
        return [masks[0] for masks in table.column("predictions").to_pylist()]

    def same(self, expected: Any, got: Any) -> bool:
        return len(expected) == len(got) and all(
            (w["token"], w["sequence"]) == (h["token"], h["sequence"]) and close(w["score"], h["score"])
            for w, h in zip(expected, got, strict=True))


class GenerationBench(PipelineBench):
    name = "generation"
    pipeline_task = "text-generation"
    auto_class = "AutoModelForCausalLM"
    call = {"max_new_tokens": 8, "do_sample": False}
    sizes = {"quick": Size(rows=24, batch_size=8, shard_rows=12),
             "full": Size(rows=96, batch_size=16, shard_rows=48)}

    def make_rows(self) -> dict[str, list[str]]:
        return {"text": data.sentence_rows(self.size.rows, self.seed, 12)}

    def params(self) -> dict[str, Any]:
        return dict(self.call)

    def floor_generate(self) -> dict[str, Any] | None:
        return dict(self.call)

    def postprocess(self, outputs: list[Any]) -> list[Any]:
        return [out[0]["generated_text"] for out in outputs]

    def outputs(self, table: pa.Table) -> list[Any]:
        return table.column("generated_text").to_pylist()

    def same(self, expected: Any, got: Any) -> bool:
        return bool(expected == got)


PIPELINE_BENCHES: tuple[type[TaskBench], ...] = (ClassificationBench, ZeroShotBench, EmbeddingsBench,
                                                 FillMaskBench, GenerationBench)

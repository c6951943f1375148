"""One benchmark per task type: its data, its baseline, its floor, its job spec and its parity check.

Every benchmark measures the same rows three ways (see ``bench/__init__.py``);
this module knows, per task, how to tokenize the rows as the worker does (for the
floor and for the token counts), how a user's baseline batches them, and how to
compare the baseline's outputs with batchformers'.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from bench import baselines, data, floor
from bench.measure import Measurement, clock
from jobs.engine.batching import length_sorted_batches

SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Size:
    """How much work one task does in one mode."""

    rows: int
    batch_size: int
    shard_rows: int
    max_batch_tokens: int | None = None
    max_words: int | None = None  # input length cap, for tiny models with short position tables
    workers: int | None = None  # worker processes when not one per core (see QaBench)


@dataclass
class Prepared:
    """The rows tokenized as a worker tokenizes them, grouped per shard."""

    features: list[dict[str, list[int]]]
    shard_of: list[int]  # shard of each feature (a chunk of a row)
    row_of: list[int]  # input row of each feature

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


class TaskBench(ABC):
    name: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]] = ("text",)
    engines: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Other (engine, dtype) runs of batchformers measured in the same run, each with its parity."""
    sizes: ClassVar[dict[str, Size]]
    """``quick`` and ``full`` sizes."""

    def __init__(self, model_dir: Path, size: Size, workers: int = 1, seed: int = 0,
                 floor_in_process: bool = False) -> None:
        self.model_dir = str(model_dir)
        self.size = size
        self.workers = workers
        self.seed = seed
        self.floor_in_process = floor_in_process

    # -- data ---------------------------------------------------------------------

    @abstractmethod
    def make_rows(self) -> dict[str, list[str]]:
        """The input columns, deterministic for the seed."""

    def spec(self, input_path: Path, output: Path) -> dict[str, Any]:
        spec = {"task": self.name, "model": self.model_dir, "input": str(input_path), "output": str(output),
                "columns": {"id": "id", **{c: c for c in self.input_columns}}, "params": self.params(),
                "batch_size": self.size.batch_size, "shard_rows": self.size.shard_rows}
        if self.size.max_batch_tokens:
            spec["max_batch_tokens"] = self.size.max_batch_tokens
        return spec

    def params(self) -> dict[str, Any]:
        return {}

    # -- the three measurements ----------------------------------------------------

    @abstractmethod
    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        """Time the user's loop; its measurement and one output per row."""

    @abstractmethod
    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        """Time the model calls alone over the worker's batches (None where there is no model)."""

    @abstractmethod
    def outputs(self, table: pa.Table) -> list[Any]:
        """batchformers' output per row, in the baseline's form."""

    @abstractmethod
    def same(self, expected: Any, got: Any) -> bool:
        """Whether one row's outputs agree (scores up to float noise)."""

    def worker_padding(self, prepared: Prepared) -> float:
        """Padding of the batches the worker forms: length-sorted per shard, like the floor's."""
        return self._padding(prepared, [b for shard in self._sorted(prepared) for b in shard])

    def timed_floor(self, prepared: Prepared, job_class: str, names: tuple[str, ...], pad_id: int,
                    generate: dict[str, Any] | None = None) -> Measurement:
        job = floor.FloorJob(self.model_dir, job_class, prepared.features, names, pad_id, generate)
        per_shard = self._sorted(prepared)
        timing = floor.run_floor(job, per_shard, self.workers, self.floor_in_process)
        padding = self._padding(prepared, [b for shard in per_shard for b in shard])
        rows = len(set(prepared.row_of))
        extra: dict[str, Any] = {"per_process_seconds": timing.per_process}
        if generate is not None:
            extra["generated_tokens"] = timing.generated_tokens
        return Measurement("floor", timing.seconds, timing.cpu_seconds, rows, prepared.tokens, padding, extra)

    # -- helpers ------------------------------------------------------------------

    def shard_groups(self, count: int) -> list[list[int]]:
        step = self.size.shard_rows
        return [list(range(first, min(first + step, count))) for first in range(0, count, step)]

    def _sorted(self, prepared: Prepared) -> list[list[list[int]]]:
        """Length-sorted batches of the features of each shard, per shard."""
        members: dict[int, list[int]] = {}
        for index, shard in enumerate(prepared.shard_of):
            members.setdefault(shard, []).append(index)
        lengths = prepared.lengths
        per_shard: list[list[list[int]]] = []
        for shard in sorted(members):
            indices = members[shard]
            batches = length_sorted_batches([lengths[i] for i in indices], self.size.batch_size,
                                            self.size.max_batch_tokens)
            per_shard.append([[indices[position] for position in batch] for batch in batches])
        return per_shard

    @staticmethod
    def _padding(prepared: Prepared, batches: list[list[int]]) -> float:
        return floor.padded_tokens(prepared.lengths, batches) / max(1, prepared.tokens)

    def _input_order_padding(self, prepared: Prepared) -> float:
        return self._padding(prepared, floor.input_order_batches(len(prepared.features), self.size.batch_size))


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a))


# -- tokenize -------------------------------------------------------------------------


class TokenizeBench(TaskBench):
    """No model: batchformers against one raw batched ``tokenizer(texts)`` call, Parquet included."""

    name = "tokenize"
    sizes = {"quick": Size(rows=400, batch_size=64, shard_rows=200),
             "full": Size(rows=320_000, batch_size=64, shard_rows=40_000)}

    def make_rows(self) -> dict[str, list[str]]:
        return {"text": data.text_rows(self.size.rows, self.seed)}

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        with clock() as timing:
            encoded = tokenizer(rows["text"])
        counts = [len(ids) for ids in encoded["input_ids"]]
        measurement = Measurement("baseline", timing.seconds, timing.cpu_seconds, len(counts), sum(counts))
        return measurement, counts

    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        return None

    def outputs(self, table: pa.Table) -> list[Any]:
        return table.column("num_tokens").to_pylist()

    def same(self, expected: Any, got: Any) -> bool:
        return bool(expected == got)


# -- NER ------------------------------------------------------------------------------


class NerBench(TaskBench):
    name = "ner"
    sizes = {"quick": Size(rows=160, batch_size=16, shard_rows=40, max_batch_tokens=512),
             "full": Size(rows=3000, batch_size=32, shard_rows=250, max_batch_tokens=2048)}

    def make_rows(self) -> dict[str, list[str]]:
        return {"text": data.text_rows(self.size.rows, self.seed)}

    def params(self) -> dict[str, Any]:
        return {"aggregation_strategy": "simple"}

    def prepare(self, rows: dict[str, list[str]]) -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        texts = rows["text"]
        encoded = tokenizer(texts, truncation=True)
        features = [{name: encoded[name][i] for name in tokenizer.model_input_names if name in encoded}
                    for i in range(len(texts))]
        shard_of = [i // self.size.shard_rows for i in range(len(texts))]
        return Prepared(features, shard_of, list(range(len(texts))))

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        prepared = self.prepare(rows)
        with clock() as timing:
            outputs = baselines.ner(self.model_dir, rows["text"], self.size.batch_size, self.params())
        measurement = Measurement("baseline", timing.seconds, timing.cpu_seconds, len(outputs), prepared.tokens,
                                  self._input_order_padding(prepared))
        return measurement, outputs

    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        names = tuple(n for n in ("input_ids", "token_type_ids") if n in tokenizer.model_input_names)
        return self.timed_floor(self.prepare(rows), "AutoModelForTokenClassification", names,
                                tokenizer.pad_token_id or 0)

    def outputs(self, table: pa.Table) -> list[Any]:
        return table.column("entities").to_pylist()

    def same(self, expected: Any, got: Any) -> bool:
        if got is None or len(expected) != len(got):
            return False
        for want, have in zip(expected, got, strict=True):
            if {k: v for k, v in want.items() if k != "score"} != {k: v for k, v in have.items() if k != "score"}:
                return False
            if not _close(float(want["score"]), have["score"]):
                return False
        return True


# -- question answering -----------------------------------------------------------------


class QaBench(TaskBench):
    name = "qa"
    input_columns = ("question", "context")
    # One worker with every core: DistilBERT over 384-token chunks ran 1.5x faster as one process with
    # two threads than as two single-threaded processes on the 2-core machine (BENCHMARKS.md).
    sizes = {"quick": Size(rows=48, batch_size=16, shard_rows=24),
             "full": Size(rows=48, batch_size=16, shard_rows=12, workers=1)}

    def make_rows(self) -> dict[str, list[str]]:
        questions, contexts = data.qa_rows(self.size.rows, self.seed)
        return {"question": questions, "context": contexts}

    def prepare(self, rows: dict[str, list[str]]) -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        max_seq_len = min(tokenizer.model_max_length, baselines.QA_MAX_SEQ_LEN)
        features, shard_of, row_of = [], [], []
        for shard, members in enumerate(self.shard_groups(len(rows["question"]))):
            encoded = tokenizer([rows["question"][i] for i in members], [rows["context"][i] for i in members],
                                truncation="only_second", max_length=max_seq_len, stride=min(max_seq_len // 2, 128),
                                return_overflowing_tokens=True, return_token_type_ids=True)
            for index, row in enumerate(encoded["overflow_to_sample_mapping"]):
                features.append({name: encoded[name][index] for name in ("input_ids", "token_type_ids")})
                shard_of.append(shard)
                row_of.append(members[row])
        return Prepared(features, shard_of, row_of)

    def worker_padding(self, prepared: Prepared) -> float:
        """jobs/tasks/qa.py groups ``batch_size`` rows (by character length) per tokenizer call and sorts
        only the chunks of that group: simulated here for its padding."""
        contexts_by_row: dict[int, list[int]] = {}
        for index, row in enumerate(prepared.row_of):
            contexts_by_row.setdefault(row, []).append(index)
        lengths = prepared.lengths
        batches: list[list[int]] = []
        for shard in sorted(set(prepared.shard_of)):
            rows = sorted({prepared.row_of[i] for i, s in enumerate(prepared.shard_of) if s == shard})
            chars = [sum(lengths[i] for i in contexts_by_row[row]) for row in rows]
            for group in floor.sorted_batches(chars, len(chars), self.size.batch_size):
                chunks = [i for position in group for i in contexts_by_row[rows[position]]]
                for batch in floor.sorted_batches([lengths[i] for i in chunks], len(chunks), self.size.batch_size):
                    batches.append([chunks[position] for position in batch])
        return self._padding(prepared, batches)

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        prepared = self.prepare(rows)
        with clock() as timing:
            outputs = baselines.qa(self.model_dir, rows["question"], rows["context"], self.size.batch_size)
        measurement = Measurement("baseline", timing.seconds, timing.cpu_seconds, len(outputs), prepared.tokens,
                                  self._input_order_padding(prepared))
        return measurement, outputs

    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        names = tuple(n for n in ("input_ids", "token_type_ids") if n in tokenizer.model_input_names)
        return self.timed_floor(self.prepare(rows), "AutoModelForQuestionAnswering", names,
                                tokenizer.pad_token_id or 0)

    def outputs(self, table: pa.Table) -> list[Any]:
        columns = {name: table.column(name).to_pylist() for name in ("answer", "score", "start", "end")}
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def same(self, expected: Any, got: Any) -> bool:
        return (expected["answer"], expected["start"], expected["end"]) == (got["answer"], got["start"], got["end"]) \
            and _close(expected["score"], got["score"])


# -- summarization and translation ----------------------------------------------------------


class Seq2SeqBench(TaskBench):
    task_key: ClassVar[str]
    text_column: ClassVar[str]
    engines: ClassVar[tuple[tuple[str, str], ...]] = (("ctranslate2", "float32"), ("ctranslate2", "int8"))
    """(engine, dtype) runs measured beside the transformers one (issue 16)."""

    def prepare(self, rows: dict[str, list[str]], prefix: str = "") -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        encoded = tokenizer([prefix + text for text in rows["text"]])
        features = [{"input_ids": ids} for ids in encoded["input_ids"]]
        count = len(features)
        return Prepared(features, [i // self.size.shard_rows for i in range(count)], list(range(count)))

    def baseline(self, rows: dict[str, list[str]]) -> tuple[Measurement, list[Any]]:
        prepared = self.prepare(rows)
        with clock() as timing:
            outputs = baselines.seq2seq(self.model_dir, rows["text"], self.size.batch_size, self.task_key)
        measurement = Measurement("baseline", timing.seconds, timing.cpu_seconds, len(outputs), prepared.tokens,
                                  self._input_order_padding(prepared))
        return measurement, outputs

    def floor(self, rows: dict[str, list[str]]) -> Measurement | None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForSeq2SeqLM.from_pretrained(self.model_dir)
        kwargs, prefix = baselines.generation_kwargs(model, self.task_key)
        del model
        return self.timed_floor(self.prepare(rows, prefix), "AutoModelForSeq2SeqLM", ("input_ids",),
                                tokenizer.pad_token_id, kwargs)

    def outputs(self, table: pa.Table) -> list[Any]:
        return table.column(self.text_column).to_pylist()

    def same(self, expected: Any, got: Any) -> bool:
        return bool(expected == got)


class SummarizationBench(Seq2SeqBench):
    name = "summarization"
    task_key = "summarization"
    text_column = "summary_text"
    sizes = {"quick": Size(rows=24, batch_size=8, shard_rows=12, max_words=30),
             "full": Size(rows=32, batch_size=8, shard_rows=16, max_words=220)}

    def make_rows(self) -> dict[str, list[str]]:
        high = self.size.max_words or 220
        return {"text": data.article_rows(self.size.rows, self.seed, low=min(40, high // 3), high=high)}


class TranslationBench(Seq2SeqBench):
    name = "translation"
    task_key = "translation"
    text_column = "translation_text"
    sizes = {"quick": Size(rows=24, batch_size=8, shard_rows=12, max_words=18),
             "full": Size(rows=80, batch_size=16, shard_rows=40)}

    def make_rows(self) -> dict[str, list[str]]:
        return {"text": data.sentence_rows(self.size.rows, self.seed, self.size.max_words)}


def _benches() -> dict[str, type[TaskBench]]:
    from bench.pipelines import PIPELINE_BENCHES

    own = (TokenizeBench, NerBench, QaBench, SummarizationBench, TranslationBench)
    return {bench.name: bench for bench in (*own, *PIPELINE_BENCHES)}


BENCHES: dict[str, type[TaskBench]] = _benches()

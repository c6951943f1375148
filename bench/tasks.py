"""One benchmark per task type: its data, its baseline, its floor, its job spec and its parity check.

Every benchmark measures the same rows three ways (see ``bench/__init__.py``);
this module knows, per task, how to tokenize the rows as the worker does (for the
floor and for the token counts), how a user's baseline batches them, and how to
compare the baseline's outputs with batchformers'.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from bench import baselines, data, floor
from bench.measure import Measurement, clock
from bench.pipelines import PIPELINE_BENCHES
from bench.task_base import Prepared, Size, TaskBench, close

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
            if not close(float(want["score"]), have["score"]):
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
            and close(expected["score"], got["score"])


# -- summarization and translation ----------------------------------------------------------


class Seq2SeqBench(TaskBench):
    task_key: ClassVar[str]
    text_column: ClassVar[str]
    engines: ClassVar[tuple[tuple[str, str], ...]] = (("ctranslate2", "float32"), ("ctranslate2", "int8"))
    """(engine, dtype) runs measured beside the transformers one: CTranslate2 is the faster engine for
    generation, and int8 is worth its parity check."""

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


OWN_BENCHES = (TokenizeBench, NerBench, QaBench, SummarizationBench, TranslationBench)
BENCHES: dict[str, type[TaskBench]] = {bench.name: bench for bench in (*OWN_BENCHES, *PIPELINE_BENCHES)}

"""Tokenization: one batched fast-tokenizer call per block of rows, columns built without row loops."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, TaskParams, TaskType
from jobs.engine.contract import Encoded, Finished, Item
from jobs.engine.loading import load_tokenizer
from jobs.engine.staged import StagedRunner


class TokenizeParams(TaskParams):
    """The tokenizer's usual call arguments."""

    add_special_tokens: bool = Field(True, description="Add [CLS]/[SEP] or the model's equivalents.")
    truncation: bool | str = Field(False, description="True, 'longest_first', 'only_first', ... or False.")
    max_length: int | None = Field(None, gt=0, description="Truncate to this many tokens (with truncation).")


class TokenizeTask(TaskType):
    name = "tokenize"
    model_requirement = ModelRequirement("a tokenizer", needs_config=False)
    Params = TokenizeParams
    default_model = "bert-base-cased"
    params: TokenizeParams

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("input_ids", pa.list_(pa.int32())),
                pa.field("attention_mask", pa.list_(pa.int8())),
                pa.field("offset_mapping", pa.list_(pa.list_(pa.int32(), 2))),
                pa.field("word_ids", pa.list_(pa.int32())),
                pa.field("num_tokens", pa.int32()),
            ]
        )

    def load(self, options: LoadOptions) -> Runner:
        return TokenizeRunner(self, load_tokenizer(options))


class TokenizeRunner(StagedRunner):
    """No device stage: ``encode`` is the tokenizer call, ``decode`` lays the encodings out as Arrow."""

    device_stage = False
    encode_rows = 4096  # nothing waits on a device: bigger tokenizer calls, fewer pieces to reassemble

    def __init__(self, task: TokenizeTask, tokenizer: Any) -> None:
        super().__init__(task.output_schema())
        self.params = task.params
        self.tokenizer = tokenizer

    def row_length(self, values: dict[str, Any]) -> int:
        return 0  # nothing is padded: keep the input order

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        texts = inputs["text"]
        batch = self.tokenizer(
            [texts[i] for i in rows],
            add_special_tokens=self.params.add_special_tokens,
            truncation=self.params.truncation,
            max_length=self.params.max_length,
            return_attention_mask=False,  # all ones without padding: built in decode as one array
            return_token_type_ids=False,
        )
        return Encoded([Item(row, ids, encoding) for row, ids, encoding in
                        zip(rows, batch["input_ids"], batch.encodings, strict=True)])

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        """Arrow columns from the flattened token lists, with no Python loop over tokens."""
        items = [row_items[0] for row_items in finished.items]
        counts = np.fromiter((len(item.ids) for item in items), dtype=np.int32, count=len(items))
        total = int(counts.sum())
        list_offsets = pa.array(np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32))
        flat_ids = np.fromiter(chain.from_iterable(item.ids for item in items), dtype=np.int32, count=total)
        spans = np.fromiter(chain.from_iterable(chain.from_iterable(item.data.offsets for item in items)),
                            dtype=np.int32, count=2 * total)
        pairs = pa.FixedSizeListArray.from_arrays(pa.array(spans, type=pa.int32()), 2)
        words = pa.array(list(chain.from_iterable(item.data.word_ids for item in items)), type=pa.int32())
        columns = [
            pa.ListArray.from_arrays(list_offsets, pa.array(flat_ids)),
            pa.ListArray.from_arrays(list_offsets, pa.array(np.ones(total, dtype=np.int8))),
            pa.ListArray.from_arrays(list_offsets, pairs),
            pa.ListArray.from_arrays(list_offsets, words),  # None (special tokens) -> null
            pa.array(counts),
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)

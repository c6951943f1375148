"""The transformers runner of summarization and translation: tokenize, ``generate``, detokenize.

The runner is staged on :mod:`jobs.engine.staged`: rows are tokenized a block at a time,
length-sorted into padded batches, generated under ``torch.inference_mode`` and written
back in input order. Inputs longer than the model accepts are cut (``truncated`` says so)
or, with ``truncation: false``, become row errors; a bad row never fails the shard.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from jobs.engine.base import LoadOptions, TaskType
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import load_model, load_tokenizer, model_input_limit
from jobs.engine.staged import StagedRunner
from jobs.tasks.seq2seq.generation import DECODER_PROMPT_LENGTH


@dataclass(frozen=True)
class Seq2SeqSettings:
    """Everything a runner needs besides the model: resolved generation, input preparation, output shape."""

    generation: dict[str, Any]
    text_column: str
    returns: int
    truncation: bool
    prefix: str = ""
    languages: tuple[str, str] | None = None
    """(src_lang, tgt_lang) for tokenizers with ``_build_translation_inputs`` (mBART, NLLB, M2M100)."""


def load_seq2seq(options: LoadOptions) -> tuple[Any, Any, Any]:
    """Tokenizer, ``AutoModelForSeq2SeqLM`` and device for ``options``.

    For another engine than transformers the model is only read (settings, conversion):
    it is loaded on the CPU in float32 whatever the job's device and dtype.
    """
    from dataclasses import replace

    from transformers import AutoModelForSeq2SeqLM

    if options.engine != "transformers":
        options = replace(options, device="cpu", dtype="float32")

    with warnings.catch_warnings():
        # MarianTokenizer warns on every load that sacremoses is missing; 4.57 ran without it too.
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        tokenizer = load_tokenizer(options)
    model, device = load_model(AutoModelForSeq2SeqLM, options)
    return tokenizer, model, device


class Seq2SeqRunner(StagedRunner):
    """Generates one output column from a ``text`` column with an encoder-decoder model.

    ``encode`` tokenizes (cutting, or refusing, rows longer than the model), ``forward`` is
    ``generate`` on a padded batch, ``decode`` turns the generated ids of finished rows into
    text with one batched call. A batch whose generation fails is retried item by item, so
    one bad row becomes a row error; out of memory halves the batch as for every task.
    """

    isolate_failures = True

    def __init__(
        self, task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings
    ) -> None:
        super().__init__(task.output_schema(), device=device,
                         pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side)
        self.model = model
        self.tokenizer = tokenizer
        # encode and decode run in two threads; a fast tokenizer must not be used by both at once
        self.tokenizer_lock = threading.Lock()
        self.settings = settings
        self.limit = model_input_limit(tokenizer, model.config)
        self.generation_config = _generation_config(settings.generation, model.generation_config)

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        """Token ids of every text, cut to the model's limit (or refused) where too long."""
        texts = [inputs["text"][row] for row in rows]
        ids = self._encode(texts, None)
        too_long = [i for i, row_ids in enumerate(ids) if self.limit is not None and len(row_ids) > self.limit]
        errors: dict[int, str] = {}
        truncated = [False] * len(rows)
        if too_long and not self.settings.truncation:
            for i in too_long:
                errors[rows[i]] = (
                    f"input is {len(ids[i])} tokens, the model accepts at most {self.limit}; "
                    "set params.truncation to true to cut it"
                )
        elif too_long:
            for i, cut in zip(too_long, self._encode([texts[i] for i in too_long], self.limit), strict=True):
                ids[i], truncated[i] = cut, True
        items = [Item(row, row_ids, truncated[i]) for i, (row, row_ids) in enumerate(zip(rows, ids, strict=True))
                 if row not in errors]
        return Encoded(items, errors)

    def _encode(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids as 4.57's ``preprocess`` made them, for many texts in one tokenizer call."""
        kwargs = {"truncation": max_length is not None, "max_length": max_length, "verbose": False}
        with self.tokenizer_lock:
            if self.settings.languages is not None:
                src_lang, tgt_lang = self.settings.languages
                encoded = self.tokenizer._build_translation_inputs(
                    texts, return_tensors=None, src_lang=src_lang, tgt_lang=tgt_lang, **kwargs
                )
            else:
                encoded = self.tokenizer([self.settings.prefix + text for text in texts], **kwargs)
        ids: list[list[int]] = encoded["input_ids"]
        return ids

    def forward(self, batch: Batch) -> list[Any]:
        with warnings.catch_warnings():
            # Advice about parameter combinations (e.g. length_penalty with greedy search) is not a row error.
            warnings.simplefilter("ignore", UserWarning)
            sequences = self.model.generate(
                input_ids=batch.tensors["input_ids"],
                attention_mask=batch.tensors["attention_mask"],
                generation_config=self.generation_config,
            )
        generated = sequences.cpu().numpy()
        per_row = self.settings.returns
        return [generated[i * per_row : (i + 1) * per_row] for i in range(len(batch.items))]

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        sequences = [sequence for outputs in finished.outputs for sequence in outputs[0]]
        with self.tokenizer_lock:
            texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True,
                                                clean_up_tokenization_spaces=False)
        per_row = self.settings.returns
        column: list[Any] = [texts[i * per_row : (i + 1) * per_row] for i in range(len(finished.rows))]
        if per_row == 1:
            column = [outputs[0] for outputs in column]
        truncated = [items[0].data for items in finished.items]
        return pa.Table.from_arrays(
            [pa.array(column, type=self.schema.field(self.settings.text_column).type), pa.array(truncated, pa.bool_())],
            schema=self.schema,
        )


def _generation_config(settings: dict[str, Any], model_generation: Any) -> Any:
    """A 5.x GenerationConfig with every resolved setting set, so ``generate`` fills nothing from the model.

    5.x fills only fields left None. ``max_new_tokens`` is None after resolution,
    so when the model itself sets one, the resolved total length is expressed as
    ``max_new_tokens`` instead of ``max_length`` (5.x would otherwise take the model's).
    """
    from transformers import GenerationConfig

    values = {key: value for key, value in settings.items() if value is not None}
    if model_generation.max_new_tokens is not None:
        values["max_new_tokens"] = values.pop("max_length") - DECODER_PROMPT_LENGTH
    config = GenerationConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for key, value in values.items():
            if hasattr(config, key):
                setattr(config, key, value)
    return config

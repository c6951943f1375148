"""Sentence embeddings (and ``pipeline("feature-extraction")``'s per-token vectors).

``pooling`` mean | cls | max gives one vector per row as Arrow ``fixed_size_list<float32>[dim]``
(DuckDB reads it as ``FLOAT[dim]``); ``none`` gives the per-token vectors the
feature-extraction pipeline returns. For a sentence-transformers directory (``modules.json``)
the pooling, normalisation and ``max_seq_length`` default to the model's own, so
``pooling: mean, normalize: true`` on all-MiniLM-L6-v2 equals
``SentenceTransformer(...).encode(..., normalize_embeddings=True)``.

Stages on :mod:`jobs.engine.staged`: one tokenizer call per block, pooling and normalisation on
the device inside ``forward`` (only the pooled vectors come back to the host), one Arrow
array per decoded block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, TaskParams
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.model_task import ModelTask
from jobs.engine.staged import StagedRunner
from jobs.errors import ModelLoadError, SpecError

PoolingName = Literal["mean", "cls", "max", "none"]
ST_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                    "pooling_mode_max_tokens": "max"}
ST_KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}
DEFAULT_POOLING = "mean"


class EmbeddingsParams(TaskParams):
    pooling: PoolingName | None = Field(
        None, description="mean | cls | max | none (per-token vectors); default the model's own (sentence-"
        "transformers directories), else mean.")
    normalize: bool | None = Field(
        None, description="Scale vectors to unit length; default the model's own (a Normalize module), else false.")
    max_length: int | None = Field(
        None, ge=1, description="Tokens per text (longer ones are cut); default the model's max_seq_length or limit.")


@dataclass(frozen=True)
class SentenceConfig:
    """What a sentence-transformers directory says about pooling, normalisation and length."""

    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None


def model_file(options: LoadOptions, name: str) -> Path | None:
    """A file of the model: from its directory, or the hub (cache) for a hub id; None when absent."""
    local = Path(options.model)
    if local.is_dir():
        path = local / name
        return path if path.exists() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(options.model, name, revision=options.revision))
    except Exception:  # absent, or no hub: not a sentence-transformers model as far as we can tell
        return None


def read_json(options: LoadOptions, name: str) -> Any:
    path = model_file(options, name)
    return json.loads(path.read_text()) if path is not None else None


def sentence_config(options: LoadOptions) -> SentenceConfig:
    """Pooling, Normalize and ``max_seq_length`` of a sentence-transformers directory (defaults otherwise)."""
    modules = read_json(options, "modules.json")
    if not modules:
        return SentenceConfig()
    pooling, normalize = None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_KNOWN_MODULES:
            raise ModelLoadError(f"{options.model}: sentence-transformers module {kind} is not supported "
                                 f"(only {', '.join(sorted(ST_KNOWN_MODULES))})")
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            config = read_json(options, f"{module['path']}/config.json") or {}
            modes = [mode for key, mode in ST_POOLING_MODES.items() if config.get(key)]
            others = [key for key, value in config.items()
                      if key.startswith("pooling_mode") and value and key not in ST_POOLING_MODES]
            if len(modes) != 1 or others:
                raise ModelLoadError(f"{options.model}: pooling {config} is not supported; set params.pooling")
            pooling = modes[0]
    settings = read_json(options, "sentence_bert_config.json") or {}
    return SentenceConfig(pooling, normalize, settings.get("max_seq_length"))


class EmbeddingsTask(ModelTask):
    name = "embeddings"
    model_requirement = ModelRequirement("a transformers encoder", "MODEL_MAPPING_NAMES")
    auto_class = "AutoModel"
    Params = EmbeddingsParams
    default_model = "sentence-transformers/all-MiniLM-L6-v2"
    params: EmbeddingsParams
    dim: int | None = None

    def bind_model(self, options: LoadOptions) -> None:
        """The vector width, from the model's config (a file read, no weights)."""
        config = read_json(options, "config.json")
        if config is None:
            raise SpecError("model", f"cannot read config.json of {options.model!r} to learn its embedding width")
        config = config.get("text_config", config)
        width = next((config[key] for key in ("hidden_size", "dim", "d_model", "n_embd") if key in config), None)
        if not isinstance(width, int):
            raise SpecError("model", f"{options.model}: its config.json names no hidden size")
        self.dim = width

    def output_schema(self) -> pa.Schema:
        if self.dim is None:
            raise SpecError("model", "the embeddings task needs its model's width: call bind_model first")
        vector = pa.list_(pa.float32(), self.dim)
        return pa.schema([pa.field("embedding", pa.list_(vector) if self.params.pooling == "none" else vector)])

    def settings(self, options: LoadOptions) -> tuple[str, bool, int | None]:
        """Pooling, normalisation and max length: the job's, else the model's, else the defaults."""
        model = sentence_config(options)
        pooling = self.params.pooling or model.pooling or DEFAULT_POOLING
        # A Normalize module scales sentence embeddings; per-token vectors stay as the model gives them
        normalize = self.params.normalize if self.params.normalize is not None else (
            model.normalize and pooling != "none")
        return pooling, normalize, self.params.max_length or model.max_seq_length

    def load(self, options: LoadOptions) -> Runner:
        if self.dim is None:
            self.bind_model(options)
        return super().load(options)

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        pooling, normalize, max_length = self.settings(options)
        return EmbeddingsRunner(self, model, tokenizer, device, pooling, normalize, max_length)


class EmbeddingsRunner(StagedRunner):
    def __init__(self, task: EmbeddingsTask, model: Any, tokenizer: Any, device: Any, pooling: str,
                 normalize: bool, max_length: int | None) -> None:
        super().__init__(task.output_schema(), device=device,
                         pad_id=tokenizer.pad_token_id or 0,
                         with_type_ids="token_type_ids" in tokenizer.model_input_names)
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        limit = model_input_limit(tokenizer, model.config)
        self.max_length = min(max_length, limit) if max_length and limit else (max_length or limit)
        self.dim = task.dim

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        encoded = self.tokenizer([inputs["text"][row] for row in rows], truncation=self.max_length is not None,
                                 max_length=self.max_length, return_attention_mask=False,
                                 return_token_type_ids=False)
        return Encoded([Item(row, ids) for row, ids in zip(rows, encoded["input_ids"], strict=True)])

    def forward(self, batch: Batch) -> Sequence[Any]:
        import torch

        hidden = self.model(**batch.tensors).last_hidden_state.float()
        mask = batch.tensors["attention_mask"]
        if self.pooling == "none":
            if self.normalize:
                hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
            tokens = hidden.cpu().numpy()
            return [tokens[i, : len(item.ids)] for i, item in enumerate(batch.items)]
        pooled = pool(hidden, mask, self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return list(pooled.cpu().numpy())

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        vectors = [outputs[0] for outputs in finished.outputs]
        vector_type = pa.list_(pa.float32(), self.dim)
        if self.pooling == "none":
            counts = np.fromiter((len(v) for v in vectors), dtype=np.int32, count=len(vectors))
            flat = np.concatenate(vectors).astype(np.float32, copy=False).ravel()
            tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            column: pa.Array = pa.ListArray.from_arrays(offsets, tokens, type=pa.list_(vector_type))
        else:
            flat = np.stack(vectors).astype(np.float32, copy=False).ravel()
            column = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
        return pa.Table.from_arrays([column], names=["embedding"])


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """sentence-transformers' Pooling: masked mean, first token, or masked max."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    expanded = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
    if pooling == "max":
        return torch.max(hidden.masked_fill(expanded == 0, -1e9), 1).values
    summed = torch.sum(hidden * expanded, 1)
    return summed / torch.clamp(expanded.sum(1), min=1e-9)

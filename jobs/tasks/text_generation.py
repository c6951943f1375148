"""Text generation with decoder-only models, as ``pipeline("text-generation")`` gives it.

The generation settings are the pipeline's (transformers 5.x ``_prepare_generate_kwargs``):
the job's parameters, over the model's generation config, over the pipeline's defaults
(``max_new_tokens=256``, ``do_sample=True``, ``temperature=0.7``; the sampling ones only
when sampling). Prompts are left-padded into length-sorted batches.

Sampling is reproducible per row, whatever the batch: row ``i`` of the input (its global
``row_index``) samples with its own ``torch.Generator`` seeded ``seed + i``, so its output
equals ``torch.manual_seed(seed + i); pipe(text, do_sample=True, ...)``. The model's own
logits processors and warpers (temperature, top-k, top-p ...) run as ``generate`` builds
them; one processor appended after them draws each row's next token from its generator
(``torch.multinomial`` on the row's probabilities, as ``generate`` draws it) and leaves that
token the only one possible, so ``generate``'s own draw can pick nothing else.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from pydantic import Field

from jobs.engine.base import GenerationOverrides, LoadOptions, ModelRequirement, Runner
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.model_task import ModelTask
from jobs.engine.staged import StagedRunner
from jobs.errors import ModelLoadError

ROW_INDEX = "row_index"
"""Input key with each row's global position (set by the shard runner); else positions in ``inputs``."""
PIPELINE_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
"""``TextGenerationPipeline._default_generation_config`` in transformers 5.x."""
SAMPLING_PARAMS = {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}
TEXT_COLUMN = "generated_text"


class TextGenerationParams(GenerationOverrides):
    max_new_tokens: int | None = Field(None, ge=1, description="New tokens at most (pipeline default 256).")
    do_sample: bool | None = Field(None, description="Sample (pipeline default true) or decode greedily.")
    seed: int = Field(0, ge=0, description="Row i samples with seed + i: the same job gives the same text.")
    temperature: float | None = Field(None, gt=0, description="Sampling temperature (pipeline default 0.7).")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    num_return_sequences: int = Field(1, ge=1, description="Texts per row; more than 1 gives a list.")
    return_full_text: bool = Field(True, description="Prompt plus continuation (true) or the continuation only.")

    generation_fields = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_return_sequences")


class TextGenerationTask(ModelTask):
    name = "generation"
    model_requirement = ModelRequirement("a decoder-only (causal) language model", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")
    auto_class = "AutoModelForCausalLM"
    engines = ("transformers",)  # no exported generation loop (yet): generate() stays PyTorch's
    Params = TextGenerationParams
    default_model = "openai-community/gpt2"
    params: TextGenerationParams

    def output_schema(self) -> pa.Schema:
        text = pa.list_(pa.string()) if self.params.num_return_sequences > 1 else pa.string()
        return pa.schema([pa.field(TEXT_COLUMN, text)])

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        if model.config.is_encoder_decoder:
            raise ModelLoadError(f"{options.model}: generation runs decoder-only models; use summarization "
                                 "or translation for encoder-decoders")
        kwargs = pipeline_generate_kwargs(model.generation_config.to_diff_dict(), self.params.overrides(),
                                          tokenizer.pad_token_id)
        if not kwargs.get("do_sample") and self.params.num_return_sequences > 1:
            raise ModelLoadError("params.num_return_sequences > 1 needs sampling (do_sample: true)")
        return TextGenerationRunner(self, model, tokenizer, device, kwargs)


def pipeline_generate_kwargs(model_generation: dict[str, Any], job: dict[str, Any],
                             pad_token_id: int | None) -> dict[str, Any]:
    """The keyword arguments the 5.x pipeline passes to ``generate`` for ``pipe(text, **job)``."""
    defaults = dict(PIPELINE_DEFAULTS)
    if pad_token_id is not None:
        defaults["pad_token_id"] = pad_token_id
    set_params = {**model_generation, **job}
    added = {key: value for key, value in defaults.items()
             if key not in set_params and not (key == "max_new_tokens" and "max_length" in set_params)}
    if not {**set_params, **added}.get("do_sample"):
        added = {key: value for key, value in added.items() if key not in SAMPLING_PARAMS}
    return {**job, **added}


class RowSampler:
    """A logits processor that draws each row's token from its own generator (see the module docstring)."""

    def __init__(self, generators: list[Any], per_row: int) -> None:
        self.generators = generators
        self.per_row = per_row

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.nn.functional.softmax(scores, dim=-1)
        chosen = torch.cat([torch.multinomial(probs[i * self.per_row : (i + 1) * self.per_row], num_samples=1,
                                              generator=generator)
                            for i, generator in enumerate(self.generators)])
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen, 0.0)


class TextGenerationRunner(StagedRunner):
    isolate_failures = True
    wants_row_index = True

    def __init__(self, task: TextGenerationTask, model: Any, tokenizer: Any, device: Any,
                 kwargs: dict[str, Any]) -> None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        super().__init__(task.output_schema(), device=device,
                         pad_id=pad_id or 0, padding_side="left")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_lock = threading.Lock()
        self.params = task.params
        self.kwargs = kwargs if "pad_token_id" in kwargs or pad_id is None else {**kwargs, "pad_token_id": pad_id}
        self.sampling = bool(kwargs.get("do_sample"))
        self.limit = model_input_limit(tokenizer, model.config)
        self.new_tokens = int(kwargs.get("max_new_tokens") or 0)
        self.sampler_lock = threading.Lock()

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        positions = inputs.get(ROW_INDEX)
        with self.tokenizer_lock:
            encoded = self.tokenizer([inputs["text"][row] for row in rows], return_attention_mask=False)
        items, errors = [], {}
        for row, ids in zip(rows, encoded["input_ids"], strict=True):
            prompt = len(ids)
            if not ids:  # the pipeline generates from the start token alone, then decodes all of it
                if self.model.generation_config.bos_token_id is None:
                    errors[row] = "text is empty and the model has no bos_token_id to start from"
                    continue
                ids = [self.model.generation_config.bos_token_id]
            if self.limit is not None and len(ids) + self.new_tokens > self.limit:
                errors[row] = (f"prompt is {len(ids)} tokens; with max_new_tokens={self.new_tokens} it exceeds "
                               f"the model's {self.limit} positions")
                continue
            seed = self.params.seed + int(positions[row] if positions is not None else row)
            items.append(Item(row, ids, (prompt, seed)))
        return Encoded(items, errors)

    def forward(self, batch: Batch) -> Sequence[Any]:
        device = batch.tensors["input_ids"].device
        with warnings.catch_warnings(), self._sampling(batch, device):
            warnings.simplefilter("ignore", UserWarning)
            sequences = self.model.generate(input_ids=batch.tensors["input_ids"],
                                            attention_mask=batch.tensors["attention_mask"], **self.kwargs)
        width = batch.tensors["input_ids"].shape[1]
        new = sequences[:, width:].cpu().numpy()
        per_row = self.params.num_return_sequences
        return [new[i * per_row : (i + 1) * per_row] for i in range(len(batch.items))]

    @contextmanager
    def _sampling(self, batch: Batch, device: Any) -> Iterator[None]:
        """While ``generate`` runs, append the per-row sampler to the processors it builds."""
        if not self.sampling:
            yield
            return
        import torch

        generators = [torch.Generator(device=device).manual_seed(item.data[1]) for item in batch.items]
        sampler = RowSampler(generators, self.params.num_return_sequences)
        build = self.model._get_logits_processor

        def with_sampler(*args: Any, **kwargs: Any) -> Any:
            processors = build(*args, **kwargs)
            processors.append(sampler)
            return processors

        with self.sampler_lock:
            self.model._get_logits_processor = with_sampler
            try:
                yield
            finally:
                del self.model._get_logits_processor

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        sequences = [sequence.tolist() for outputs in finished.outputs for sequence in outputs[0]]
        with self.tokenizer_lock:
            texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        per_row = self.params.num_return_sequences
        column: list[Any] = []
        for index, row in enumerate(finished.rows):
            prefix = inputs["text"][row] if self.params.return_full_text else ""
            row_texts = [prefix + text for text in texts[index * per_row : (index + 1) * per_row]]
            column.append(row_texts if per_row > 1 else row_texts[0])
        return pa.table({TEXT_COLUMN: pa.array(column, self.schema.field(TEXT_COLUMN).type)})

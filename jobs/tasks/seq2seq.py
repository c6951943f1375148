"""Encoder-decoder generation shared by summarization and translation, as transformers 4.57 ran it.

The 4.57 ``summarization`` / ``translation`` pipelines (removed in 5.x) built a
generation config in a particular order: pipeline defaults, then the model's own
generation config only where the pipeline kept a global default, then the
``max_length`` rule, then ``task_specific_params``; ``generate`` filled defaults
from the model once more and applied the call's keyword arguments. transformers
5.x fills unset fields differently, so :func:`resolve_generation` replays 4.57's
order in plain Python and the runner passes every setting explicitly.

The runner is staged on :mod:`jobs.engine.staged`: rows are tokenized a block at a time,
length-sorted into padded batches, generated under ``torch.inference_mode`` and written
back in input order. Inputs longer than the
model accepts are cut (``truncated`` says so) or, with ``truncation: false``,
become row errors; a bad row never fails the shard.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from jobs.engine.base import LoadOptions, ModelRequirement, TaskParams, TaskType
from jobs.engine.loading import load_model, load_tokenizer, model_input_limit
from jobs.engine.staged import Batch, Encoded, Finished, Item, StagedRunner
from jobs.errors import SpecError

PIPELINE_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "num_beams": 4}
"""``Text2TextGenerationPipeline._default_generation_config`` in 4.57."""

GLOBAL_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "min_length": 0,
    "early_stopping": False,
    "do_sample": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "use_cache": True,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "token_healing": False,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "return_dict_in_generate": False,
    "is_assistant": False,
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
    "assistant_lookbehind": 10,
    "target_lookbehind": 10,
    "disable_compile": False,
}
"""The non-None fields of 4.57's ``GenerationConfig()``; every other field defaulted to None."""

MODEL_DEFAULTS_SINCE = (4, 50)
"""4.57's ``generate`` re-filled defaults from models whose generation config was saved by >= 4.50."""

DECODER_PROMPT_LENGTH = 1
"""Decoding starts from ``decoder_start_token_id`` alone; ``max_new_tokens`` counts after it."""

GENERATION_PARAMS = (
    "max_length",
    "min_length",
    "max_new_tokens",
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "early_stopping",
    "num_return_sequences",
)


SEQ2SEQ_MODEL = ModelRequirement("an encoder-decoder (seq2seq) model", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                                 encoder_decoder=True)  # what summarization and translation need


class GenerationParams(TaskParams):
    """Generation settings a job may override; unset ones follow the model, as in the 4.57 pipelines."""

    max_length: int | None = Field(
        None, ge=1, description="Longest output in tokens (ignored while max_new_tokens applies, as in 4.57)."
    )
    min_length: int | None = Field(None, ge=0, description="Shortest output in tokens.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; takes precedence over max_length."
    )
    num_beams: int | None = Field(None, ge=1, description="Beam width (the pipelines default to 4).")
    length_penalty: float | None = Field(None, description="Exponent on length in beam scores.")
    no_repeat_ngram_size: int | None = Field(None, ge=0, description="Forbid repeating n-grams of this size.")
    early_stopping: bool | Literal["never"] | None = Field(None, description="Beam search stopping rule.")
    num_return_sequences: int | None = Field(
        None, ge=1, description="Outputs per row; more than 1 gives a list."
    )
    truncation: bool = Field(
        True, description="Cut inputs longer than the model accepts (false: such rows error)."
    )

    @model_validator(mode="after")
    def _returns_within_beams(self) -> GenerationParams:
        if self.num_beams is not None and self.returns > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.returns}) must not exceed num_beams ({self.num_beams})"
            )
        return self

    @property
    def returns(self) -> int:
        """How many outputs each row gets."""
        return self.num_return_sequences or 1

    def overrides(self) -> dict[str, Any]:
        """The generation settings the job set, as call keyword arguments to 4.57's pipeline."""
        return {name: getattr(self, name) for name in GENERATION_PARAMS if getattr(self, name) is not None}


def output_schema(text_column: str, params: GenerationParams) -> pa.Schema:
    """``<task>_text`` (a list when several sequences are returned) and ``truncated``."""
    text_type = pa.list_(pa.string()) if params.returns > 1 else pa.string()
    return pa.schema([pa.field(text_column, text_type), pa.field("truncated", pa.bool_())])


def pipeline_generation_config(
    model_generation: dict[str, Any], task_params: dict[str, Any] | None, pad_token_id: int | None
) -> tuple[dict[str, Any], str | None]:
    """The generation config and prefix a 4.57 pipeline built at construction (``Pipeline.__init__``).

    ``model_generation`` holds only the fields the model's generation config sets.
    Returns the config and the ``prefix`` popped from the task's parameters (or None).
    """
    config = {**GLOBAL_DEFAULTS, **PIPELINE_DEFAULTS}
    _fill_from_model(config, model_generation)
    if config["max_new_tokens"] == PIPELINE_DEFAULTS["max_new_tokens"] and config["max_length"] not in (
        None,
        GLOBAL_DEFAULTS["max_length"],
    ):
        config["max_new_tokens"] = None  # the model's own max_length wins over the pipeline's length default
    task = dict(task_params or {})
    prefix = task.pop("prefix", None)
    config.update(task)
    if config.get("pad_token_id") is None and pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    return config, prefix


def generate_config(
    pipeline_config: dict[str, Any],
    model_generation: dict[str, Any],
    overrides: dict[str, Any],
    *,
    refill_from_model: bool = True,
    max_positions: int | None = None,
) -> dict[str, Any]:
    """What 4.57's ``generate`` ran with, given the pipeline's config and the call's keyword arguments.

    ``max_length`` comes back as the total decoder length and ``max_new_tokens`` as None.
    """
    config = dict(pipeline_config)
    if refill_from_model:
        _fill_from_model(config, model_generation)
    config.update(overrides)
    config["max_length"] = _total_length(config, "max_length" in overrides, max_positions)
    config["max_new_tokens"] = None
    return config


def _fill_from_model(config: dict[str, Any], model_generation: dict[str, Any]) -> None:
    """Take the model's value wherever ``config`` still holds the global default (4.57 ``use_model_defaults``)."""
    for key, value in model_generation.items():
        if key.startswith("_") or key == "transformers_version":
            continue
        if key == "cache_implementation" and value == "hybrid":
            continue
        default = GLOBAL_DEFAULTS.get(key)
        if config.get(key) == default and value != default:
            config[key] = value
    if config.get("temperature") == 0.0:
        config["do_sample"] = False


def _total_length(config: dict[str, Any], max_length_passed: bool, max_positions: int | None) -> int:
    """4.57's ``_prepare_generated_length`` for an encoder-decoder: the decoder's total length limit."""
    if config.get("max_new_tokens") is not None:
        return int(config["max_new_tokens"]) + DECODER_PROMPT_LENGTH
    max_length = int(config["max_length"])
    if not max_length_passed and max_length == GLOBAL_DEFAULTS["max_length"]:
        max_length += DECODER_PROMPT_LENGTH
        if max_positions is not None:
            max_length = min(max_length, max_positions)
    return max_length


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


SEQ2SEQ_ENGINES = ("transformers", "ctranslate2")
"""What summarization and translation run on (the spec's ``engine``)."""


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


def resolve_generation(
    model: Any, tokenizer: Any, task: str, params: GenerationParams, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """4.57's generation settings and input prefix for ``pipeline(task, model)(text, **params)``.

    ``extra`` holds keyword arguments the pipeline passed to ``generate`` itself
    (``forced_bos_token_id`` for multilingual translation).
    """
    model_generation = _set_fields(model.generation_config)
    task_params = (getattr(model.config, "task_specific_params", None) or {}).get(task)
    pipeline_config, task_prefix = pipeline_generation_config(
        model_generation, task_params, tokenizer.pad_token_id
    )
    prefix = task_prefix if task_prefix is not None else getattr(model.config, "prefix", None)
    config = generate_config(
        pipeline_config,
        model_generation,
        {**params.overrides(), **(extra or {})},
        refill_from_model=_saved_since(model, MODEL_DEFAULTS_SINCE),
        max_positions=getattr(model.config, "max_position_embeddings", None),
    )
    if config.get("num_return_sequences", 1) != params.returns:
        raise SpecError(
            "params.num_return_sequences",
            f"the model's generation config returns {config['num_return_sequences']} sequences; "
            "set num_return_sequences explicitly",
        )
    if params.returns > config["num_beams"]:
        raise SpecError(
            "params.num_return_sequences",
            f"{params.returns} sequences need num_beams >= {params.returns} (this model uses {config['num_beams']})",
        )
    return config, prefix or ""


def seq2seq_runner(task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings,
                   options: LoadOptions) -> StagedRunner:
    """The runner of ``options.engine`` for a loaded model and its resolved settings."""
    return _RUNNERS[options.engine](task, model, tokenizer, device, settings, options)


def _transformers_runner(task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings,
                         options: LoadOptions) -> StagedRunner:
    return Seq2SeqRunner(task, model, tokenizer, device, settings)


def _ctranslate2_runner(task: TaskType, model: Any, tokenizer: Any, device: Any, settings: Seq2SeqSettings,
                        options: LoadOptions) -> StagedRunner:
    from jobs.engine.ctranslate2 import load_runner

    return load_runner(task, model, tokenizer, settings, options)


_RUNNERS = {"transformers": _transformers_runner, "ctranslate2": _ctranslate2_runner}


def _set_fields(generation_config: Any) -> dict[str, Any]:
    """The fields a loaded (5.x) generation config sets: 5.x leaves unset fields None."""
    return {key: value for key, value in generation_config.to_dict().items() if value is not None}


def _saved_since(model: Any, minimum: tuple[int, int]) -> bool:
    """Whether the model's generation config was written by transformers >= ``minimum``."""
    from packaging.version import Version

    generation = model.generation_config
    saved = generation.transformers_version
    if getattr(generation, "_from_model_config", False):
        saved = getattr(model.config, "transformers_version", None) or saved
    if not saved:
        return True
    return Version(Version(saved).base_version).release[:2] >= minimum


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
        super().__init__(task.output_schema().append(pa.field("error", pa.string())), device=device,
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
            schema=self.schema.remove(self.schema.get_field_index("error")),
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


# -- the same settings on CTranslate2 (engine: ctranslate2) ---------------------------------

CTRANSLATE2_MAPPED = (
    "max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size", "early_stopping",
    "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id", "eos_token_id", "bad_words_ids",
    "suppress_tokens", "repetition_penalty",
)
"""Resolved settings that become ``translate_batch`` options (see :func:`ctranslate2_options`)."""

CTRANSLATE2_INERT = (
    "max_new_tokens", "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate", "remove_invalid_values",
    "temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "min_p", "is_assistant",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "disable_compile", "cache_implementation", "cache_config", "compile_config",
    "generation_kwargs", "transformers_version", "prefill_chunk_size", "assistant_early_exit", "low_memory",
    "return_legacy_cache", "trust_remote_code", "token_healing",
)
"""Settings with no effect on what greedy or beam search returns (sampling knobs apply only with
``do_sample``, which is refused), or already applied elsewhere (the decoder start token is the
converted model's own, pad is CTranslate2's)."""


def ctranslate2_options(generation: dict[str, Any], tokenizer: Any) -> tuple[dict[str, Any], list[str] | None]:
    """``translate_batch`` keyword arguments and target prefix for 4.57's resolved ``generation``.

    Lengths: 4.57's ``max_length`` counts the decoder start token, which CTranslate2 does not
    (-1); with ``forced_eos_token_id`` 4.57 spends the last position on the forced end token,
    which never reaches the text (-1 more), where CTranslate2 stops without one. ``min_length``
    counts the start token too. The forced BOS (NLLB/mBART target language, BART's ``<s>``) is
    a one-token target prefix, which CTranslate2 counts in both lengths as 4.57 does. The end
    token is kept in hypotheses so that length penalties divide by 4.57's length.

    Raises SpecError naming the first setting CTranslate2 cannot express.
    """
    for name, value in generation.items():
        if name in CTRANSLATE2_MAPPED or name in CTRANSLATE2_INERT or name.startswith("_"):
            continue
        default = GLOBAL_DEFAULTS.get(name)
        if value != default and value not in (None, [], {}):
            raise SpecError(f"params.{name}", f"engine ctranslate2 cannot express {name}={value!r} (resolved from "
                                              "the model's generation config and the job); use engine: transformers")
    if generation.get("early_stopping") == "never":
        raise SpecError("params.early_stopping", "engine ctranslate2 cannot express early_stopping='never' "
                                                 "(it stops once num_beams hypotheses are finished)")
    eos = generation.get("eos_token_id")
    end_ids = list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else [tokenizer.eos_token_id]
    forced_eos = generation.get("forced_eos_token_id")
    if forced_eos is not None and forced_eos not in end_ids:
        raise SpecError("params.forced_eos_token_id", f"engine ctranslate2 cannot force {forced_eos}, which is not "
                                                      "an end token of this model; use engine: transformers")
    forced_bos = generation.get("forced_bos_token_id")
    prefix = [tokenizer.convert_ids_to_tokens(int(forced_bos))] if forced_bos is not None else None
    max_length = int(generation["max_length"]) - DECODER_PROMPT_LENGTH - (1 if forced_eos is not None else 0)
    suppress = [list(tokenizer.convert_ids_to_tokens(list(ids))) for ids in generation.get("bad_words_ids") or []]
    suppress += [[tokenizer.convert_ids_to_tokens(int(i))] for i in generation.get("suppress_tokens") or []]
    beams = int(generation.get("num_beams") or 1)
    options: dict[str, Any] = {
        "beam_size": beams,
        "num_hypotheses": int(generation.get("num_return_sequences") or 1),
        "length_penalty": float(generation.get("length_penalty", 1.0)) if beams > 1 else 0.0,
        "no_repeat_ngram_size": int(generation.get("no_repeat_ngram_size") or 0),
        "repetition_penalty": float(generation.get("repetition_penalty") or 1.0),
        "max_decoding_length": max(1, max_length),
        "min_decoding_length": max(0, int(generation.get("min_length") or 0) - DECODER_PROMPT_LENGTH),
        "end_token": [int(i) for i in end_ids],
        "return_end_token": True,
        "max_input_length": 0,
        "patience": 1.0,
    }
    if suppress:
        options["suppress_sequences"] = suppress
    return options, prefix

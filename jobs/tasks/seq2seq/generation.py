"""Transformers 4.57's generation settings for summarization and translation, replayed in plain Python.

The 4.57 ``summarization`` / ``translation`` pipelines (removed in 5.x) built a
generation config in a particular order: pipeline defaults, then the model's own
generation config only where the pipeline kept a global default, then the
``max_length`` rule, then ``task_specific_params``; ``generate`` filled defaults
from the model once more and applied the call's keyword arguments. transformers
5.x fills unset fields differently, so :func:`resolve_generation` replays 4.57's
order and every runner passes the result explicitly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from jobs.engine.base import GenerationOverrides
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


class GenerationParams(GenerationOverrides):
    """Generation settings a job may override; unset ones follow the model, as in the 4.57 pipelines."""

    generation_fields = GENERATION_PARAMS
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

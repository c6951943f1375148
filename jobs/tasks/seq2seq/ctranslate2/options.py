"""What CTranslate2 needs to run a job: the package, the compute type and device, and the
4.57 generation settings as ``translate_batch`` options (anything it cannot express is a SpecError)."""

from __future__ import annotations

import importlib.util
from typing import Any

from jobs.errors import ModelLoadError, SpecError
from jobs.tasks.seq2seq.generation import DECODER_PROMPT_LENGTH, GLOBAL_DEFAULTS

PACKAGE = "ctranslate2"
INSTALL_HINT = "pip install 'batchformers[ctranslate2]'"
CPU_COMPUTE_TYPES = {"auto": "float32", "float32": "float32", "int8": "int8"}
CUDA_COMPUTE_TYPES = {"float32": "float32", "int8": "int8", "float16": "float16", "bfloat16": "bfloat16"}


def available() -> bool:
    """Whether the ``ctranslate2`` package is installed (checked at submit time)."""
    return importlib.util.find_spec(PACKAGE) is not None


def require() -> None:
    """A SpecError saying what to install when ``ctranslate2`` is missing."""
    if not available():
        raise SpecError("engine", f"engine ctranslate2 needs the ctranslate2 package: {INSTALL_HINT}")


def check_params(params: dict[str, Any]) -> None:
    """Job parameters CTranslate2 cannot express, refused at submit time (the model's own settings
    are checked when a worker loads it)."""
    if params.get("early_stopping") == "never":
        raise SpecError("params.early_stopping", "engine ctranslate2 cannot express early_stopping='never' "
                                                 "(it stops once num_beams hypotheses are finished); "
                                                 "use true or false, or engine: transformers")


# -- device and compute type ----------------------------------------------------------


def compute_type(dtype: str, device: str) -> str:
    """The CTranslate2 compute type for a spec's ``dtype`` on ``device`` (``cpu`` or ``cuda``)."""
    if device == "cpu":
        if dtype not in CPU_COMPUTE_TYPES:
            raise SpecError("dtype", f"dtype {dtype} runs on CUDA only with engine ctranslate2; "
                                     "use auto, float32 or int8 on a CPU")
        return CPU_COMPUTE_TYPES[dtype]
    if dtype == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return CUDA_COMPUTE_TYPES[dtype]


def translator_device(device: str) -> tuple[str, int]:
    """(``cpu`` | ``cuda``, device index) for a spec's ``device``."""
    import ctranslate2

    cuda = ctranslate2.get_cuda_device_count()
    if device == "auto":
        return ("cuda", 0) if cuda else ("cpu", 0)
    if device == "cpu":
        return "cpu", 0
    index = int(device.partition(":")[2] or 0)
    if index >= cuda:
        raise ModelLoadError(f"device {device!r} requested but CTranslate2 sees {cuda} CUDA device(s) on this worker")
    return "cuda", index


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

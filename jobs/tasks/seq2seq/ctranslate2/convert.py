"""Converting a loaded transformers model to CTranslate2, with what transformers 5 configs no longer carry."""

from __future__ import annotations

from typing import Any

from jobs.errors import ModelLoadError

CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "bart": {"normalize_before": False},
    "mbart": {"normalize_before": True},
    "pegasus": {"normalize_before": True},
}
"""Config attributes CTranslate2's converter reads that transformers 5 configs no longer carry
(what these architectures always were: BART post-norm, mBART and Pegasus pre-norm)."""


def convert_model(model: Any, tokenizer: Any, name: str, quantization: str, output_dir: str) -> None:
    """Convert the loaded ``model`` (weights as loaded, so the pinned revision) with its ``tokenizer``."""
    from ctranslate2.converters import TransformersConverter

    class _LoadedConverter(TransformersConverter):  # type: ignore[misc]
        def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return model

        def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return tokenizer

        def _load(self) -> Any:
            spec = super()._load()
            _fill_special_tokens(spec.config, model, tokenizer)
            return spec

    for attribute, value in CONFIG_DEFAULTS.get(model.config.model_type, {}).items():
        if not hasattr(model.config, attribute):
            setattr(model.config, attribute, value)
    from ctranslate2.converters import transformers as loaders

    registry = loaders._MODEL_LOADERS
    original = registry.get("MarianConfig")
    if model.config.model_type == "marian" and _marian_needs_pad_start(model):
        registry["MarianConfig"] = _marian_from_pad_loader()
    try:
        _LoadedConverter(name).convert(output_dir, quantization=quantization)
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ModelLoadError(f"CTranslate2 cannot convert {name!r}: {exc}") from exc
    finally:
        if original is not None:
            registry["MarianConfig"] = original


SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _fill_special_tokens(config: Any, model: Any, tokenizer: Any) -> None:
    """Special tokens the tokenizer does not name (a WordPiece vocabulary has no ``eos_token``) come
    from the model config's ids; CTranslate2 needs every one of them as a string."""
    for name, default in SPECIAL_DEFAULTS.items():
        if getattr(config, name, None) is None:
            index = getattr(model.config, f"{name}_id", None)
            setattr(config, name, tokenizer.convert_ids_to_tokens(index) if index is not None else default)


def _marian_needs_pad_start(model: Any) -> bool:
    """Whether a Marian model breaks what CTranslate2's Marian converter assumes.

    It drops ``<pad>`` as the last vocabulary entry and starts the decoder from a zero vector,
    which is what trained opus-mt models hold there. A model whose start token (pad) is not the
    last entry, or whose pad embedding is not zero, must keep it and start from it instead.
    """
    pad = model.config.decoder_start_token_id
    weight = model.get_decoder().embed_tokens.weight
    if pad is None or pad >= weight.shape[0]:
        return False
    return bool(pad != weight.shape[0] - 1 or weight[pad].abs().max().item() > 0)


def _marian_from_pad_loader() -> Any:
    """A Marian loader that keeps ``<pad>`` and starts decoding from its embedding, as transformers does."""
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader

    class MarianFromPad(MarianMTLoader):  # type: ignore[misc]
        def get_model_spec(self, model: Any) -> Any:
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            config.eos_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
            config.unk_token = tokenizer.unk_token or config.unk_token
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec: Any, decoder: Any) -> None:
            BartLoader.set_decoder(self, spec, decoder)

        def get_vocabulary(self, model: Any, tokenizer: Any) -> list[str]:
            tokens: list[str] = BartLoader.get_vocabulary(self, model, tokenizer)
            return tokens

    return MarianFromPad()

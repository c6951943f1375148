"""Translation, as ``pipeline("translation_xx_to_yy")`` / ``pipeline("translation")`` in transformers 4.57 gave it.

``src_lang``/``tgt_lang`` play the part of the pipeline's task name: with plain
codes (``en``, ``de``) they select ``task_specific_params["translation_en_to_de"]``
and its prefix, as ``pipeline("translation_en_to_de")`` did; without them the
model's first ``translation_*`` entry applies, as ``pipeline("translation")`` did.
Multilingual tokenizers (mBART-50, NLLB, M2M100: those with
``_build_translation_inputs``) need both languages: the source sets the input's
language token, the target becomes ``forced_bos_token_id``, and no prefix is used.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from jobs.engine.base import LoadOptions
from jobs.errors import SpecError
from jobs.tasks.seq2seq.generation import GenerationParams, resolve_generation
from jobs.tasks.seq2seq.runner import Seq2SeqSettings
from jobs.tasks.seq2seq.task import Seq2SeqTask

TEXT_COLUMN = "translation_text"
OPUS_MT = "Helsinki-NLP/opus-mt-{src}-{tgt}"


class TranslationParams(GenerationParams):
    """Languages plus generation overrides; see :class:`jobs.tasks.seq2seq.generation.GenerationParams`."""

    src_lang: str | None = Field(
        None, min_length=1, description="Source language code (en, eng_Latn, en_XX...)."
    )
    tgt_lang: str | None = Field(None, min_length=1, description="Target language code.")

    @model_validator(mode="after")
    def _languages_together(self) -> TranslationParams:
        if (self.src_lang is None) != (self.tgt_lang is None):
            missing = "tgt_lang" if self.tgt_lang is None else "src_lang"
            raise ValueError(f"src_lang and tgt_lang go together: set {missing} too")
        return self

    @property
    def plain_languages(self) -> bool:
        """Codes that fit 4.57's ``translation_XX_to_YY`` task names (no underscores)."""
        return bool(self.src_lang and self.tgt_lang) and "_" not in f"{self.src_lang}{self.tgt_lang}"


class TranslationTask(Seq2SeqTask):
    name = "translation"
    Params = TranslationParams
    text_column = TEXT_COLUMN
    default_model = None
    params: TranslationParams

    @classmethod
    def default_model_for(cls, params: dict[str, Any]) -> str | None:
        """The opus-mt model for plain ``src_lang``/``tgt_lang`` codes, else None (a model must be given)."""
        parsed = TranslationParams(**params)
        if not parsed.plain_languages:
            return None
        return OPUS_MT.format(src=parsed.src_lang, tgt=parsed.tgt_lang)

    def settings_for(self, model: Any, tokenizer: Any, options: LoadOptions) -> Seq2SeqSettings:
        languages = self._multilingual_languages(tokenizer, options.model)
        extra = {"forced_bos_token_id": _forced_bos(tokenizer, *languages)} if languages else {}
        task = task_key(self.params, getattr(model.config, "task_specific_params", None))
        generation, prefix = resolve_generation(model, tokenizer, task, self.params, extra)
        return Seq2SeqSettings(generation=generation, text_column=TEXT_COLUMN, returns=self.params.returns,
                               truncation=self.params.truncation, prefix="" if languages else prefix,
                               languages=languages)

    def _multilingual_languages(self, tokenizer: Any, model: str) -> tuple[str, str] | None:
        """(src_lang, tgt_lang) when the tokenizer is multilingual; both are then required."""
        if not getattr(tokenizer, "_build_translation_inputs", None):
            return None
        if self.params.src_lang is None or self.params.tgt_lang is None:
            raise SpecError(
                "params.tgt_lang",
                f"{model} is a multilingual model: set params.src_lang and params.tgt_lang "
                "to language codes of its tokenizer",
            )
        return self.params.src_lang, self.params.tgt_lang


def task_key(params: TranslationParams, task_specific_params: dict[str, Any] | None) -> str:
    """The ``task_specific_params`` key 4.57 used: ``translation_{src}_to_{tgt}``, else the first ``translation*``."""
    if params.plain_languages:
        return f"translation_{params.src_lang}_to_{params.tgt_lang}"
    for key in task_specific_params or {}:
        if key.startswith("translation"):
            return str(key)
    return "translation"


def _forced_bos(tokenizer: Any, src_lang: str, tgt_lang: str) -> int:
    """The target language token id, checking that the tokenizer knows both languages."""
    try:
        encoded = tokenizer._build_translation_inputs(
            [""], return_tensors=None, src_lang=src_lang, tgt_lang=tgt_lang
        )
    except (KeyError, ValueError) as exc:
        raise SpecError(
            "params.src_lang", f"the tokenizer rejects {src_lang!r} -> {tgt_lang!r}: {exc}"
        ) from exc
    # Language codes are special tokens in all these tokenizers; unknown ones become <unk>.
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    if not special.issuperset(encoded["input_ids"][0]):
        raise SpecError("params.src_lang", f"{src_lang!r} is not a language code of this tokenizer")
    forced = encoded.get("forced_bos_token_id")
    if not isinstance(forced, int) or forced not in special:
        raise SpecError("params.tgt_lang", f"{tgt_lang!r} is not a language code of this tokenizer")
    return forced

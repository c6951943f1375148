"""Summarization and translation on CTranslate2 (``engine: ctranslate2``), on the task engine.

The model is converted once per (model, pinned revision, compute type) into
``BATCHFORMERS_CACHE_DIR/ctranslate2/`` (:mod:`.cache`) and loaded with
``ctranslate2.Translator``. ``encode`` and ``decode`` are
:class:`jobs.tasks.seq2seq.runner.Seq2SeqRunner`'s (our tokenizer, our truncation, our
detokenization), only ``forward`` is CTranslate2's ``translate_batch``. Batching, order,
row errors, out-of-memory halving and progress are the engine's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.engine.base import LoadOptions, TaskType
from jobs.engine.contract import Batch, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.staged import StagedRunner
from jobs.errors import ModelLoadError
from jobs.settings import Settings
from jobs.tasks.seq2seq.ctranslate2.cache import conversion_key, converted
from jobs.tasks.seq2seq.ctranslate2.convert import convert_model
from jobs.tasks.seq2seq.ctranslate2.options import (
    compute_type,
    ctranslate2_options,
    require,
    translator_device,
)
from jobs.tasks.seq2seq.runner import Seq2SeqRunner, Seq2SeqSettings, load_seq2seq


class CTranslate2Runner(Seq2SeqRunner):
    """A seq2seq runner whose device stage is ``ctranslate2.Translator.translate_batch``.

    ``encode`` and ``decode`` are the transformers runner's; tokens cross over as strings
    (CTranslate2's interface), mapped with the tokenizer's vocabulary once, not per call.
    """

    def __init__(self, task: TaskType, translator: Any, tokenizer: Any, model_config: Any,
                 settings: Seq2SeqSettings, options: dict[str, Any], target_prefix: list[str] | None,
                 special: tuple[str, str] = ("<s>", "</s>"),
                 fallback: Callable[[], Seq2SeqRunner] | None = None) -> None:
        StagedRunner.__init__(self, task.output_schema(),
                              pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side)
        import threading

        self.translator = translator
        self.tokenizer = tokenizer
        self.tokenizer_lock = threading.Lock()
        self.settings = settings
        self.limit = model_input_limit(tokenizer, model_config)
        self.translate_options = options
        self.target_prefix = target_prefix
        vocabulary = tokenizer.get_vocab()
        self.id_to_token = [""] * (max(vocabulary.values()) + 1)
        for token, index in vocabulary.items():
            self.id_to_token[index] = token
        self.token_to_id = vocabulary
        self.unk_id = tokenizer.unk_token_id
        self.special = special
        self.forced_end_penalty: float | None = None
        """Length penalty to re-rank hypotheses with when 4.57 forced an end token (see ``_rescored``)."""
        self.end_tokens = {self.id_to_token[i] for i in options.get("end_token", []) if i < len(self.id_to_token)}
        self._fallback_factory = fallback
        self._fallback: Seq2SeqRunner | None = None

    def collate(self, items: list[Item]) -> Batch:
        """CTranslate2 pads by itself: the batch is token strings, counted as the engine counts them."""
        sources = [[self.id_to_token[i] for i in item.ids] for item in items]
        lengths = [len(item.ids) for item in items]
        return Batch(items, {"source": sources}, sum(lengths), max(lengths, default=0) * len(items))

    def forward(self, batch: Batch) -> list[Any]:
        sources = batch.tensors["source"]
        skipped = [i for i, source in enumerate(sources) if self._no_content(source)]
        outputs: list[Any] = [None] * len(sources)
        if skipped:
            alone = self._fallback_runner()
            items = [batch.items[i] for i in skipped]
            for i, output in zip(skipped, alone.forward(alone.collate(items)), strict=True):
                outputs[i] = output
        decoded = [i for i in range(len(sources)) if outputs[i] is None]
        if decoded:
            picked = [sources[i] for i in decoded]
            prefix = [list(self.target_prefix) for _ in picked] if self.target_prefix else None
            results = self.translator.translate_batch(picked, prefix, **self.translate_options)
            per_row = self.settings.returns
            for i, result in zip(decoded, results, strict=True):
                hypotheses = self._rescored(result) if self.forced_end_penalty is not None else result.hypotheses
                outputs[i] = [[self.token_to_id.get(t, self.unk_id) for t in tokens] for tokens in hypotheses[:per_row]]
        return outputs

    def _rescored(self, result: Any) -> list[list[str]]:
        """Hypotheses in 4.57's order where it forced the end token at ``max_length``.

        Such a hypothesis is one token longer in 4.57 (the forced end token, log-probability 0)
        than in CTranslate2, which stops at the length limit: its length penalty divides by one
        more. Every finished hypothesis comes back (``num_hypotheses`` = beams) and is re-scored.
        """
        penalty = float(self.forced_end_penalty or 0.0)
        scored = []
        for tokens, score in zip(result.hypotheses, result.scores, strict=True):
            length = max(1, len(tokens))
            raw = score * length**penalty
            if not tokens or tokens[-1] not in self.end_tokens:
                length += 1
            scored.append((raw / length**penalty, tokens))
        scored.sort(key=lambda pair: -pair[0])
        return [tokens for _, tokens in scored]

    def _no_content(self, source: list[str]) -> bool:
        """CTranslate2's own rule for a source with nothing between its special tokens (it then returns
        the target prefix without decoding; 4.57 generated from the special tokens, so such rows go
        to the transformers runner)."""
        bos, eos = self.special
        length = len(source)
        if length == 1:
            length -= source[0] in (bos, eos)
        elif length >= 2:
            length -= source[0] == bos
            length -= 1 if source[-1] == eos else 2 if source[-2] == eos else 0
        return length <= 0

    def _fallback_runner(self) -> Seq2SeqRunner:
        """The transformers runner, loaded on first need (only rows CTranslate2 will not decode use it)."""
        with self.tokenizer_lock:
            if self._fallback is None:
                if self._fallback_factory is None:
                    raise RuntimeError("CTranslate2 does not decode a text without content and no fallback is set")
                self._fallback = self._fallback_factory()
            return self._fallback


def load_runner(task: TaskType, model: Any, tokenizer: Any, settings: Seq2SeqSettings,
                options: LoadOptions) -> CTranslate2Runner:
    """Convert ``model`` (once, cached) and load it on CTranslate2 for ``options``' device and dtype."""
    require()
    import ctranslate2

    device, index = translator_device(options.device)
    compute = compute_type(options.dtype, device)
    translate_options, target_prefix = ctranslate2_options(settings.generation, tokenizer)
    worker = Settings()
    root = worker.resolved_cache_dir()
    key = conversion_key(options.model, model.config, options.revision, compute)
    directory = converted(key, root, lambda out: convert_model(model, tokenizer, options.model, compute, out))
    threads = worker.torch_threads or _torch_threads()
    try:
        translator = ctranslate2.Translator(str(directory), device=device, device_index=index,
                                            compute_type=compute, inter_threads=1, intra_threads=threads)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"CTranslate2 cannot load {options.model!r} ({compute} on {device}): {exc}") from exc
    config = json.loads((directory / "config.json").read_text())
    vocabulary = set(_vocabulary(directory))
    suppress = [seq for seq in translate_options.pop("suppress_sequences", []) if vocabulary.issuperset(seq)]
    if suppress:  # tokens the converted model lacks (Marian's <pad>) can never be generated anyway
        translate_options["suppress_sequences"] = suppress
    rescore = settings.generation.get("forced_eos_token_id") is not None and translate_options["beam_size"] > 1
    if rescore:
        translate_options.update(num_hypotheses=translate_options["beam_size"], return_scores=True)
    special = (config.get("bos_token") or "<s>", config.get("eos_token") or "</s>")

    def fallback() -> Seq2SeqRunner:
        _, torch_model, torch_device = load_seq2seq(replace(options, engine="transformers", device="cpu",
                                                            dtype="float32"))
        return Seq2SeqRunner(task, torch_model, tokenizer, torch_device, settings)

    runner = CTranslate2Runner(task, translator, tokenizer, model.config, settings, translate_options,
                               target_prefix, special, fallback)
    if rescore:
        runner.forced_end_penalty = float(translate_options["length_penalty"])
    return runner


def _vocabulary(directory: Path) -> list[str]:
    for name in ("target_vocabulary.json", "shared_vocabulary.json"):
        if (directory / name).exists():
            tokens: list[str] = json.loads((directory / name).read_text())
            return tokens
    return []


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())

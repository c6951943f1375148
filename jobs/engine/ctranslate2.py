"""Summarization and translation on CTranslate2 (``engine: ctranslate2``), on the task engine.

The model is converted once per (model, pinned revision, compute type) into
``BATCHFORMERS_CACHE_DIR/ctranslate2/`` and loaded with ``ctranslate2.Translator``.
The runner is a :class:`jobs.engine.staged.StagedRunner` like every task's: ``encode`` and
``decode`` are :class:`jobs.tasks.seq2seq.Seq2SeqRunner`'s (our tokenizer, our truncation,
our detokenization), only ``forward`` is CTranslate2's ``translate_batch``. Batching,
order, row errors, out-of-memory halving and progress are the engine's.

Conversion is safe with many workers starting at once: each one checks the cache,
then takes a file lock, checks again, converts into a temporary directory beside the
cache entry and renames it into place. Every entry carries a manifest of its files'
sizes and SHA-256; an entry that does not match it (a truncated or partial copy) is
removed and converted again.

The 4.57 generation settings resolved by :func:`jobs.tasks.seq2seq.resolve_generation`
map onto ``translate_batch`` options with :func:`jobs.tasks.seq2seq.ctranslate2_options`;
anything CTranslate2 cannot express is a :class:`jobs.errors.SpecError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from jobs.engine.base import LoadOptions, TaskType
from jobs.engine.loading import model_input_limit
from jobs.engine.staged import Batch, Item, StagedRunner
from jobs.errors import ModelLoadError, SpecError
from jobs.settings import Settings
from jobs.tasks.seq2seq import Seq2SeqRunner, Seq2SeqSettings, ctranslate2_options, load_seq2seq

log = logging.getLogger(__name__)

PACKAGE = "ctranslate2"
INSTALL_HINT = "pip install 'batchformers[ctranslate2]'"
MANIFEST = "batchformers-conversion.json"
"""Written last into every converted model: the key it was made for and its files' sizes and hashes."""
CACHE_SUBDIR = "ctranslate2"
CPU_COMPUTE_TYPES = {"auto": "float32", "float32": "float32", "int8": "int8"}
CUDA_COMPUTE_TYPES = {"float32": "float32", "int8": "int8", "float16": "float16", "bfloat16": "bfloat16"}
_HASH_CHUNK = 1 << 20
CONVERSION_RECIPE = "4"
"""Bumped when how batchformers converts changes, so older cache entries are not reused."""
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "bart": {"normalize_before": False},
    "mbart": {"normalize_before": True},
    "pegasus": {"normalize_before": True},
}
"""Config attributes CTranslate2's converter reads that transformers 5 configs no longer carry
(what these architectures always were: BART post-norm, mBART and Pegasus pre-norm)."""


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


# -- the conversion cache --------------------------------------------------------------


@dataclass(frozen=True)
class ConversionKey:
    """What a converted model depends on; one cache entry per distinct key."""

    model: str
    revision: str
    compute_type: str
    ctranslate2: str
    recipe: str = CONVERSION_RECIPE

    def directory(self, root: Path) -> Path:
        digest = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.model.strip("/"))[-60:]
        return root / CACHE_SUBDIR / f"{slug}-{self.compute_type}-{digest}"


def conversion_key(model_name: str, model_config: Any, revision: str | None, compute: str) -> ConversionKey:
    """The key of a loaded model: a hub model by its resolved commit, a local one by its files' stamps."""
    import ctranslate2

    path = Path(model_name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        stamp = hashlib.sha256(json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
                               .encode()).hexdigest()[:16]
        return ConversionKey(str(path.resolve()), f"local:{stamp}", compute, ctranslate2.__version__)
    pinned = getattr(model_config, "_commit_hash", None) or revision or "main"
    return ConversionKey(model_name, str(pinned), compute, ctranslate2.__version__)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, key: ConversionKey) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _file_digest(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"key": key.__dict__, "files": files}, indent=1, sort_keys=True))


def is_complete(directory: Path, key: ConversionKey) -> bool:
    """True when ``directory`` holds a whole conversion for ``key``: manifest present, every file as listed."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("key") != key.__dict__ or not manifest.get("files"):
        return False
    for name, expected in manifest["files"].items():
        path = directory / name
        try:
            if path.stat().st_size != expected["size"] or _file_digest(path) != expected["sha256"]:
                return False
        except OSError:
            return False
    return True


def converted(key: ConversionKey, root: Path, convert: Any) -> Path:
    """The cache entry for ``key``, converting it with ``convert(output_dir)`` when missing or broken.

    Many processes may call this at once: one converts (under a file lock, into a temporary
    directory renamed into place), the others wait for the lock and find the entry complete.
    """
    from filelock import FileLock

    final = key.directory(root)
    if is_complete(final, key):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_complete(final, key):
            return final
        if final.exists():
            log.warning("batchformers: conversion in %s is incomplete or corrupt; converting again", final)
            trash = final.with_name(f".{final.name}.broken-{uuid.uuid4().hex[:8]}")
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            started = time.perf_counter()
            output = staging / "model"
            convert(str(output))
            _write_manifest(output, key)
            output.rename(final)
            log.warning("batchformers: converted %s to CTranslate2 %s in %.1f s (%s)", key.model,
                        key.compute_type, time.perf_counter() - started, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


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


# -- the runner ------------------------------------------------------------------------


class CTranslate2Runner(Seq2SeqRunner):
    """A seq2seq runner whose device stage is ``ctranslate2.Translator.translate_batch``.

    ``encode`` and ``decode`` are the transformers runner's; tokens cross over as strings
    (CTranslate2's interface), mapped with the tokenizer's vocabulary once, not per call.
    """

    def __init__(self, task: TaskType, translator: Any, tokenizer: Any, model_config: Any,
                 settings: Seq2SeqSettings, options: dict[str, Any], target_prefix: list[str] | None,
                 special: tuple[str, str] = ("<s>", "</s>"),
                 fallback: Callable[[], Seq2SeqRunner] | None = None) -> None:
        StagedRunner.__init__(self, task.output_schema().append(pa.field("error", pa.string())),
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


__all__ = ["CTranslate2Runner", "ConversionKey", "available", "compute_type", "converted", "is_complete",
           "load_runner", "require"]

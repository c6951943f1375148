"""Tiny encoder-decoder models: BART, T5, Marian and NLLB (multilingual) for generation tasks.

Each mirrors the shape of a real checkpoint that users run through the 4.57
``summarization`` / ``translation`` pipelines (distilbart-cnn, t5-small,
opus-mt, nllb-200) closely enough to exercise the same code paths: generation
configs with their own ``max_length`` and beams, ``task_specific_params`` with
prefixes, sentencepiece Marian vocabularies and NLLB language-code tokens.
Random weights are scaled up so that generations differ between inputs and beam
search has real choices to make.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from jobs.testing.tiny.corpus import corpus_lines

MODEL_MAX_LENGTH = 128
WEIGHT_SCALE = 6.0
EOS_SCALE = 2.0

_BART_LAYERS: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}


def build_bart(directory: Path, seed: int = 0) -> None:
    """A BART summarizer shaped like ``distilbart-cnn-12-6`` (byte-level BPE, beams, length penalty)."""
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast, GenerationConfig

    tokenizer = BartTokenizerFast(tokenizer_object=_train_byte_level_bpe(), model_max_length=MODEL_MAX_LENGTH)
    summarization = {
        "early_stopping": True,
        "length_penalty": 2.0,
        "max_length": 24,
        "min_length": 6,
        "no_repeat_ngram_size": 3,
        "num_beams": 4,
    }
    special: dict[str, Any] = {
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
        "forced_bos_token_id": 0,
        "forced_eos_token_id": 2,
        "task_specific_params": {"summarization": summarization},
    }
    config = BartConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MODEL_MAX_LENGTH, **_BART_LAYERS, **special
    )
    generation = GenerationConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        **summarization,
    )
    _save(BartForConditionalGeneration, config, generation, tokenizer, directory, seed)


def build_t5(directory: Path, seed: int = 0) -> None:
    """A T5 with ``summarize:`` and ``translate English to German:`` task prefixes, like t5-small."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration, T5Tokenizer

    tokenizer = T5Tokenizer(tokenizer_object=_train_unigram(), extra_ids=0, model_max_length=MODEL_MAX_LENGTH)
    special: dict[str, Any] = {
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "task_specific_params": {
            "summarization": {
                "early_stopping": True,
                "length_penalty": 2.0,
                "max_length": 200,
                "min_length": 8,
                "no_repeat_ngram_size": 3,
                "num_beams": 4,
                "prefix": "summarize: ",
            },
            "translation_en_to_de": {
                "early_stopping": True,
                "max_length": 300,
                "num_beams": 4,
                "prefix": "translate English to German: ",
            },
        },
    }
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        **special,
    )
    generation = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    _save(T5ForConditionalGeneration, config, generation, tokenizer, directory, seed)


def build_marian(directory: Path, seed: int = 0) -> None:
    """A Marian en->de translator like ``opus-mt-en-de``: shared sentencepiece vocab, pad as decoder start."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    _write_marian_vocab(directory)
    tokenizer = MarianTokenizer(
        source_spm=str(directory / "source.spm"),
        target_spm=str(directory / "target.spm"),
        vocab=str(directory / "vocab.json"),
        source_lang="en",
        target_lang="de",
        model_max_length=MODEL_MAX_LENGTH,
    )
    pad = tokenizer.pad_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MODEL_MAX_LENGTH,
        **_BART_LAYERS,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
    )
    generation = GenerationConfig(
        bad_words_ids=[[pad]],
        bos_token_id=0,
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        max_length=32,
        num_beams=4,
        pad_token_id=pad,
    )
    _save(MarianMTModel, config, generation, tokenizer, directory, seed)


def build_multilingual(directory: Path, seed: int = 0) -> None:
    """An NLLB-style many-to-many model: M2M100 weights, BPE vocab plus every NLLB language code."""
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    vocab, merges = _train_metaspace_bpe()
    tokenizer = NllbTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=MODEL_MAX_LENGTH,
        **_BART_LAYERS,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    generation = GenerationConfig(
        bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1, max_length=32
    )
    _save(M2M100ForConditionalGeneration, config, generation, tokenizer, directory, seed)


def _save(model_class: Any, config: Any, generation: Any, tokenizer: Any, directory: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    _scale_weights(model, seed)
    _boost_eos(model, config.eos_token_id)
    model.generation_config = generation
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    _make_tokenizer_config_portable(directory / "tokenizer_config.json")


def _make_tokenizer_config_portable(path: Path) -> None:
    """Let transformers 4.57 load what 5.x saved (the golden outputs are made with 4.57).

    5.x writes ``extra_special_tokens`` as a list, which 4.57 reads as a dict and
    fails on; both versions accept the older ``additional_special_tokens`` key.
    """
    config = json.loads(path.read_text())
    extra = config.pop("extra_special_tokens", None)
    if extra:
        config["additional_special_tokens"] = extra
    if config.get("tokenizer_class") == "RobertaTokenizer":
        config["tokenizer_class"] = "BartTokenizer"  # 5.x aliases BART's tokenizer to RoBERTa's
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _scale_weights(model: Any, seed: int) -> None:
    """Redraw every weight matrix larger than the tiny init.

    With the default ``std=0.02`` init the next-token distribution is almost
    uniform and nearly the same for every input, so beam search would pick the
    same few tokens everywhere; larger weights make the output depend on the input.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed_positions" not in name:
                fan_in = parameter.shape[1]
                std = WEIGHT_SCALE / fan_in**0.5 if "embed" not in name and "shared" not in name else 1.0
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _boost_eos(model: Any, eos_token_id: int) -> None:
    """Lengthen the end-of-sequence embedding (tied to the output layer) so generations end on their own.

    Otherwise a random model almost never picks ``</s>`` and every output runs to
    the length limit, 256 new tokens for T5: slow, and nothing would test rows of
    a batch finishing at different steps.
    """
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[eos_token_id] *= EOS_SCALE


def _train_byte_level_bpe(vocab_size: int = 600) -> Any:
    """A RoBERTa/BART byte-level BPE with ``<s> <pad> </s> <unk>`` first and ``<mask>`` last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer.add_special_tokens(["<mask>"])
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    return tokenizer


def _train_unigram(vocab_size: int = 600) -> Any:
    """A T5-style sentencepiece Unigram: ``<pad> </s> <unk>`` first, ``</s>`` appended to every input.

    Trained by sentencepiece (as T5's was) rather than ``tokenizers``, whose
    Unigram trainer breaks ties differently from run to run.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    processor = spm.SentencePieceProcessor(
        model_proto=_train_sentencepiece(vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    )
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer


def _train_sentencepiece(vocab_size: int, **special_ids: int) -> bytes:
    """A serialized sentencepiece Unigram model of the corpus; single-threaded, so reproducible."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    options: dict[str, Any] = {
        "sentence_iterator": iter(corpus_lines()),
        "model_writer": buffer,
        "vocab_size": vocab_size,
        "model_type": "unigram",
        "character_coverage": 1.0,
        "normalization_rule_name": "identity",
        "num_threads": 1,
        "minloglevel": 2,
        **special_ids,
    }
    spm.SentencePieceTrainer.train(**options)
    return buffer.getvalue()


def _train_metaspace_bpe(vocab_size: int = 600) -> tuple[dict[str, int], list[Any]]:
    """Vocabulary and merges of an NLLB-style sentencepiece BPE (``<s> <pad> </s> <unk>`` first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [
        tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in state["merges"]
    ]
    return state["vocab"], merges


def _write_marian_vocab(directory: Path, vocab_size: int = 600) -> None:
    """``source.spm``/``target.spm`` (one shared model) and an opus-mt style ``vocab.json``.

    opus-mt vocabularies put ``</s>`` at 0, ``<unk>`` at 1 and ``<pad>`` last.
    """
    import sentencepiece as spm

    model = _train_sentencepiece(vocab_size, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))

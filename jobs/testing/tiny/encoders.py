"""Tiny BERT encoders: a cased WordPiece tokenizer and token-classification / QA heads."""

from __future__ import annotations

from pathlib import Path

from jobs.testing.tiny.corpus import corpus_lines

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def train_wordpiece_tokenizer(vocab_size: int = 700, model_max_length: int = 64):  # type: ignore[no-untyped-def]
    """A cased BERT WordPiece fast tokenizer trained on the tiny corpus.

    The small vocabulary makes many words split into ``##`` pieces and a few
    characters unknown, which the parity tests need. ``model_max_length`` is small
    so that ordinary sentences exceed it and truncation/stride paths are exercised.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        limit_alphabet=70,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        do_lower_case=False,
        model_max_length=model_max_length,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def _bert_config(vocab_size: int, max_positions: int, **extra):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        **extra,
    )


def build_bert_ner(directory: Path, seed: int = 0) -> None:
    """A BERT token classifier with CoNLL-style BIO labels."""
    import torch
    from transformers import BertForTokenClassification

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(seed)
    config = _bert_config(
        len(tokenizer),
        max_positions=128,
        id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
    )
    model = BertForTokenClassification(config)
    _sharpen(model.classifier, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_bert_qa(directory: Path, seed: int = 0) -> None:
    """A BERT extractive question-answering model (start/end logits)."""
    import torch
    from transformers import BertForQuestionAnswering

    tokenizer = train_wordpiece_tokenizer(model_max_length=128)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(_bert_config(len(tokenizer), max_positions=256))
    _sharpen(model.qa_outputs, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _sharpen(head, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Scale a random head up so that predictions vary from token to token.

    With the default tiny init every token gets nearly uniform probabilities, so
    every entity would be the same label; larger weights give varied labels and
    groups, which is what the parity tests need to mean something.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 2.0)
        head.bias.zero_()


def build_distilbert_qa(directory: Path, seed: int = 0) -> None:
    """A DistilBERT extractive QA model: like ``bert-qa`` but without token_type_ids.

    DistilBERT's tokenizer does not return ``token_type_ids`` to the model, which
    is the code path the QA task must get right for the default (DistilBERT) model.
    """
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering, DistilBertTokenizerFast

    wordpiece = train_wordpiece_tokenizer(model_max_length=128)
    tokenizer = DistilBertTokenizerFast(
        tokenizer_object=wordpiece.backend_tokenizer,
        do_lower_case=False,
        model_max_length=128,
        model_input_names=["input_ids", "attention_mask"],
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=256,
    )
    model = DistilBertForQuestionAnswering(config)
    _sharpen(model.qa_outputs, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)

"""What a user writes today, per task: the baselines batchformers is measured against.

- tokenize: one raw batched ``tokenizer(texts)`` call over every row.
- ner: ``transformers.pipeline("token-classification", batch_size=B)`` over a
  ``datasets`` column (``KeyDataset``).
- qa, summarization, translation: transformers 5 has no pipeline for them any more,
  so these are the loops the 4.57 pipelines ran, over ``AutoModelFor*``: items in
  input order, one tokenizer call per item, ``B`` model rows padded together, and
  each item post-processed on its own (QA: a numpy outer product per chunk, as
  4.57's ``decode_spans``).

Each function takes the model directory and the rows and returns one result per
row, in input order, comparable with batchformers' output columns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from jobs.testing.qa_457 import select_starts_ends

QA_MAX_SEQ_LEN = 384
QA_MAX_ANSWER_LEN = 15
QA_TOP_K = 1


@contextlib.contextmanager
def tokenizers_parallelism_kept() -> Iterator[None]:
    """transformers pipelines set TOKENIZERS_PARALLELISM=false for the whole process (and every
    worker it later spawns); put it back so that later measurements are not slowed down."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def tokenize(model_dir: str, texts: list[str]) -> list[int]:
    """One batched call over every row; returns the token count of each row."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(texts)
    return [len(ids) for ids in encoded["input_ids"]]


def ner(model_dir: str, texts: list[str], batch_size: int, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """``pipeline("token-classification")`` over ``KeyDataset(dataset, "text")``."""
    import datasets
    from transformers import pipeline
    from transformers.pipelines.pt_utils import KeyDataset

    with tokenizers_parallelism_kept():
        pipe: Any = pipeline("token-classification", model=model_dir, device="cpu", **params)
        dataset = datasets.Dataset.from_dict({"text": texts})
        return [[_plain(e) for e in out] for out in pipe(KeyDataset(dataset, "text"), batch_size=batch_size)]


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in entity.items()}


# -- question answering ---------------------------------------------------------


def qa(model_dir: str, questions: list[str], contexts: list[str], batch_size: int) -> list[dict[str, Any]]:
    """4.57's QA pipeline loop: per item a SquadExample and a tokenizer call; ``batch_size`` chunks
    per forward in input order; per chunk numpy span decoding; best answer per item."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    max_seq_len = min(tokenizer.model_max_length, QA_MAX_SEQ_LEN)
    stride = min(max_seq_len // 2, 128)
    names = tokenizer.model_input_names
    answers: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    per_item: list[list[dict[str, Any]]] = [[] for _ in questions]

    def flush() -> None:
        longest = max(len(f["input_ids"]) for f in pending)
        batch = {name: torch.tensor([_pad(f[name], longest, 0) for f in pending]) for name in names}
        with torch.no_grad():  # what 4.57 pipelines used
            output = model(**batch)
        for row, feature in enumerate(pending):
            n = len(feature["input_ids"])
            start = output.start_logits[row : row + 1, :n].numpy()
            end = output.end_logits[row : row + 1, :n].numpy()
            per_item[feature["item"]].append({**feature, "start": start, "end": end})
        pending.clear()

    for item, (question, context) in enumerate(zip(questions, contexts, strict=True)):
        _squad_example(context)  # 4.57 built one per item (a per-character word table)
        encoded = tokenizer(question, context, truncation="only_second", max_length=max_seq_len, stride=stride,
                            return_token_type_ids=True, return_overflowing_tokens=True,
                            return_offsets_mapping=True, return_special_tokens_mask=True)
        for span in range(len(encoded["input_ids"])):
            ids = encoded["input_ids"][span]
            p_mask = [int(s != 1) for s in encoded.sequence_ids(span)]
            for index in np.nonzero(np.array(ids) == tokenizer.cls_token_id)[0]:
                p_mask[index] = 0
            pending.append({"item": item, "input_ids": ids, "attention_mask": encoded["attention_mask"][span],
                            "token_type_ids": encoded["token_type_ids"][span], "p_mask": p_mask,
                            "encoding": encoded[span]})
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    for item, chunks in enumerate(per_item):
        answers.append(_qa_postprocess(chunks, contexts[item]))
    return answers


def _pad(values: list[int], length: int, pad: int) -> list[int]:
    return values + [pad] * (length - len(values))


def _squad_example(context: str) -> tuple[list[str], list[int]]:
    doc_tokens: list[str] = []
    char_to_word: list[int] = []
    previous_space = True
    for char in context:
        if char in " \t\r\n" or ord(char) == 0x202F:
            previous_space = True
        else:
            if previous_space:
                doc_tokens.append(char)
            else:
                doc_tokens[-1] += char
            previous_space = False
        char_to_word.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word


def _qa_postprocess(chunks: list[dict[str, Any]], context: str) -> dict[str, Any]:
    """4.57's ``postprocess`` with top_k=1, align_to_words=True, no impossible answer."""
    candidates = QA_TOP_K * 2 + 10
    answers: list[dict[str, Any]] = []
    for chunk in chunks:
        starts, ends, scores, _ = select_starts_ends(chunk["start"], chunk["end"], chunk["p_mask"],
                                                     np.array(chunk["attention_mask"])[None], top_k=candidates,
                                                     max_answer_len=QA_MAX_ANSWER_LEN)
        encoding = chunk["encoding"]
        for s, e, score in zip(starts, ends, scores.tolist(), strict=True):
            try:
                first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            except Exception:
                first, last = encoding.offsets[s][0], encoding.offsets[e][1]
            text = context[first:last]
            known = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if known:
                known["score"] += score
            else:
                answers.append({"score": score, "start": first, "end": last, "answer": text})
    answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:QA_TOP_K]
    return answers[0] if answers else {"score": None, "start": None, "end": None, "answer": None}


# -- summarization and translation -----------------------------------------------


def generation_kwargs(model: Any, task_key: str) -> tuple[dict[str, Any], str]:
    """The generation settings and input prefix 4.57's text2text pipelines used for ``model``.

    Start from the pipeline's ``GenerationConfig(max_new_tokens=256, num_beams=4)``, take a
    field from the model's generation config only where the pipeline default equals the global
    default, drop ``max_new_tokens`` when the model sets its own ``max_length``, then apply
    ``task_specific_params[task_key]`` (its ``prefix`` goes in front of every input).
    """
    from transformers import GenerationConfig

    defaults = GenerationConfig()
    pipeline_defaults = GenerationConfig(max_new_tokens=256, num_beams=4)
    own = model.generation_config.to_dict()
    settings = pipeline_defaults.to_dict()
    for key, value in own.items():
        if key in settings and settings[key] == getattr(defaults, key, None) and not key.startswith("_"):
            settings[key] = value
    if settings["max_new_tokens"] == 256 and settings.get("max_length") not in (None, 20):
        settings["max_new_tokens"] = None
    task_params = dict((getattr(model.config, "task_specific_params", None) or {}).get(task_key, {}))
    prefix = task_params.pop("prefix", "") or ""
    settings.update(task_params)
    wanted = ("max_new_tokens", "max_length", "min_length", "num_beams", "length_penalty", "early_stopping",
              "no_repeat_ngram_size", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
              "decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
    kwargs = {key: settings.get(key) for key in wanted if settings.get(key) is not None}
    kwargs.update(do_sample=False, num_return_sequences=1)
    return kwargs, prefix


def seq2seq(model_dir: str, texts: list[str], batch_size: int, task_key: str) -> list[str]:
    """4.57's text2text loop: one tokenizer call per item, ``batch_size`` items padded in input
    order, ``generate`` per batch, one decode per output."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    kwargs, prefix = generation_kwargs(model, task_key)
    outputs: list[str] = []
    for first in range(0, len(texts), batch_size):
        items = [tokenizer(prefix + text, return_tensors="pt") for text in texts[first : first + batch_size]]
        longest = max(item["input_ids"].shape[1] for item in items)
        pad = tokenizer.pad_token_id
        ids = torch.stack([torch.nn.functional.pad(i["input_ids"][0], (0, longest - i["input_ids"].shape[1]),
                                                   value=pad) for i in items])
        mask = torch.stack([torch.nn.functional.pad(i["attention_mask"][0], (0, longest - i["input_ids"].shape[1]))
                            for i in items])
        with torch.no_grad():
            generated = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        outputs.extend(str(tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False))
                       for g in generated)
    return outputs

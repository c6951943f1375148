"""Fill-mask, as ``pipeline("fill-mask")`` gives it, several masks per text included.

Output ``predictions``: one list per mask token, in text order, each the ``top_k`` best
{score, token, token_str, sequence}. The pipeline returns the inner list alone for a text
with one mask and the list of lists for several; the column always holds the list of lists
(one fixed Arrow type), so a one-mask row's pipeline result is ``predictions[0]``. As in
the pipeline, with several masks each ``sequence`` fills only its own mask and keeps the
special tokens.

Stages on :mod:`jobs.engine.staged`: one tokenizer call per block; ``forward`` gathers the logits
at the mask positions of the whole batch and takes softmax and top-k there (on the device),
so only ``masks x top_k`` numbers per row come back; ``decode`` builds the sequences with
two batched tokenizer decodes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, StringList, TaskParams
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.model_task import ModelTask
from jobs.engine.staged import StagedRunner
from jobs.errors import ModelLoadError


class FillMaskParams(TaskParams):
    top_k: int = Field(5, ge=1, description="Predictions per mask, best first.")
    targets: StringList | None = Field(None, description="Score only these tokens (words not in the vocabulary "
                                      "count as their first token, as in the pipeline).")


class FillMaskTask(ModelTask):
    name = "fill_mask"
    model_requirement = ModelRequirement("a masked language model", "MODEL_FOR_MASKED_LM_MAPPING_NAMES")
    auto_class = "AutoModelForMaskedLM"
    Params = FillMaskParams
    default_model = "distilbert/distilroberta-base"
    params: FillMaskParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("predictions", pa.list_(pa.list_(prediction_struct())))])

    def check_tokenizer(self, tokenizer: Any, options: LoadOptions) -> None:
        if tokenizer.mask_token_id is None:
            raise ModelLoadError(f"{options.model}: the tokenizer defines no mask_token")

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        return FillMaskRunner(self, model, tokenizer, device)


def prediction_struct() -> pa.StructType:
    return pa.struct([pa.field("score", pa.float64()), pa.field("token", pa.int64()),
                      pa.field("token_str", pa.string()), pa.field("sequence", pa.string())])


def target_ids(tokenizer: Any, targets: list[str]) -> np.ndarray:
    """The pipeline's ``get_target_ids``: vocabulary entries, else each word's first token; set order."""
    vocab = tokenizer.get_vocab()
    ids = []
    for target in targets:
        index = vocab.get(target)
        if index is None:
            pieces = tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                               return_token_type_ids=False, max_length=1, truncation=True)["input_ids"]
            if not pieces:
                continue
            index = pieces[0]
        ids.append(index)
    unique = list(set(ids))
    if not unique:
        raise ModelLoadError("params.targets: none of the targets gives a token of this model")
    return np.array(unique)


class FillMaskRunner(StagedRunner):
    def __init__(self, task: FillMaskTask, model: Any, tokenizer: Any, device: Any) -> None:
        super().__init__(task.output_schema(), device=device,
                         pad_id=tokenizer.pad_token_id or 0,
                         with_type_ids="token_type_ids" in tokenizer.model_input_names)
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_lock = threading.Lock()  # encode and decode run in two threads
        self.limit = model_input_limit(tokenizer, model.config)
        self.targets = target_ids(tokenizer, task.params.targets) if task.params.targets else None
        self.top_k = min(task.params.top_k, len(self.targets)) if self.targets is not None else task.params.top_k
        self.mask_id = tokenizer.mask_token_id

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        with self.tokenizer_lock:
            encoded = self.tokenizer([inputs["text"][row] for row in rows], truncation=self.limit is not None,
                                     max_length=self.limit, return_attention_mask=False, return_token_type_ids=False)
        items, errors = [], {}
        for row, ids in zip(rows, encoded["input_ids"], strict=True):
            masks = np.flatnonzero(np.asarray(ids) == self.mask_id)
            if not len(masks):
                errors[row] = f"No mask_token ({self.tokenizer.mask_token}) found on the input"
            else:
                items.append(Item(row, ids, masks))
        return Encoded(items, errors)

    def forward(self, batch: Batch) -> Sequence[Any]:
        import torch

        logits = self.model(**batch.tensors).logits
        owners = np.concatenate([np.full(len(item.data), i) for i, item in enumerate(batch.items)])
        positions = np.concatenate([item.data for item in batch.items])
        picked = logits[torch.from_numpy(owners).to(logits.device), torch.from_numpy(positions).to(logits.device)]
        probs = picked.softmax(dim=-1)
        if self.targets is not None:
            probs = probs[..., torch.from_numpy(self.targets).to(probs.device)]
        values, predictions = probs.topk(self.top_k)
        values, predictions = values.float().cpu().numpy(), predictions.cpu().numpy()
        if self.targets is not None:
            predictions = self.targets[predictions]
        bounds = np.cumsum([0] + [len(item.data) for item in batch.items])
        return [(values[a:b], predictions[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        single: list[list[int]] = []
        several: list[list[int]] = []
        plan = []  # per row: per mask: per prediction (score, token, which list, index)
        pad = self.tokenizer.pad_token_id
        for items, outputs in zip(finished.items, finished.outputs, strict=True):
            item, (values, predictions) = items[0], outputs[0]
            ids = np.asarray(item.ids)
            target = single if len(item.data) == 1 else several
            row = []
            for position, mask_values, mask_predictions in zip(item.data, values, predictions, strict=True):
                masked = []
                for value, token in zip(mask_values.tolist(), mask_predictions.tolist(), strict=True):
                    tokens = ids.copy()
                    tokens[position] = token
                    target.append(tokens[tokens != pad].tolist())
                    masked.append((value, token, target is single, len(target) - 1))
                row.append(masked)
            plan.append(row)
        with self.tokenizer_lock:
            texts = {True: self.tokenizer.batch_decode(single, skip_special_tokens=True),
                     False: self.tokenizer.batch_decode(several, skip_special_tokens=False)}
            vocabulary = sorted({token for row in plan for mask in row for _, token, _, _ in mask})
            words = dict(zip(vocabulary, self.tokenizer.batch_decode([[t] for t in vocabulary]), strict=True))
        column = [[[{"score": value, "token": token, "token_str": words[token], "sequence": texts[one][index]}
                    for value, token, one, index in mask] for mask in row] for row in plan]
        return pa.table({"predictions": pa.array(column, self.schema.field("predictions").type)})

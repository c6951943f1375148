"""Exporting a loaded transformers model to ONNX, and its entry in the conversion cache.

torch.onnx's TorchScript exporter (``dynamo=False``) traces the model once on a small padded
batch; batch and sequence axes stay dynamic, so every later batch shape runs on the same graph.
It needs nothing online and traces transformers 5's attention-mask code as plain operators.
The graph's inputs are the model's own among ``input_ids``, ``attention_mask``, ``token_type_ids``;
its outputs are what the task's runner reads of the transformers output, by the same names.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.engine.conversion_cache import entry_directory, pinned_model
from jobs.errors import ModelLoadError

CACHE_SUBDIR = "onnxruntime"
MODEL_FILE = "model.onnx"
OPSET = 17
EXPORT_RECIPE = "1"
"""Bumped when how batchformers exports changes, so older cache entries are not reused."""
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TOKEN_AXES = {0: "batch", 1: "sequence"}
HEAD_OUTPUTS: dict[str, dict[str, dict[int, str]]] = {
    "AutoModelForTokenClassification": {"logits": TOKEN_AXES},
    "AutoModelForQuestionAnswering": {"start_logits": TOKEN_AXES, "end_logits": TOKEN_AXES},
    "AutoModelForSequenceClassification": {"logits": {0: "batch"}},
    "AutoModelForMaskedLM": {"logits": TOKEN_AXES},
    "AutoModel": {"last_hidden_state": TOKEN_AXES},
}
"""The task's Auto class -> the outputs its runner reads, with their dynamic axes."""


@dataclass(frozen=True)
class OnnxKey:
    """What an exported model depends on; one cache entry per distinct key."""

    model: str
    revision: str
    head: str
    opset: int
    dtype: str
    torch: str
    recipe: str = EXPORT_RECIPE

    def directory(self, root: Path) -> Path:
        return entry_directory(root, CACHE_SUBDIR, self, f"{self.head.removeprefix('AutoModel') or 'Base'}-{self.dtype}")

    def label(self) -> str:
        return f"ONNX {self.dtype} ({self.head})"


def onnx_key(model_name: str, model_config: Any, revision: str | None, head: str, dtype: str) -> OnnxKey:
    """The key of a model: a hub model by its resolved commit, a local one by its files' stamps."""
    import torch

    model, pinned = pinned_model(model_name, model_config, revision)
    return OnnxKey(model, pinned, head, OPSET, dtype, torch.__version__.split("+")[0])


def graph_inputs(model: Any) -> list[str]:
    """The inputs of ``INPUT_NAMES`` the model's forward takes (DistilBERT: no token type ids)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return [name for name in INPUT_NAMES if name in accepted]


def export_model(model: Any, head: str, output_dir: str) -> None:
    """Export ``model`` (float32, eval mode, on the CPU) with ``head``'s outputs into ``output_dir/model.onnx``."""
    import torch

    outputs = HEAD_OUTPUTS[head]
    names = graph_inputs(model)

    class Traced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> tuple[Any, ...]:
            result = self.model(**dict(zip(names, tensors, strict=True)), return_dict=True)
            return tuple(result[name] for name in outputs)

    vocabulary = int(getattr(model.config, "vocab_size", 100) or 100)
    ids = torch.arange(8, dtype=torch.long).repeat(2, 1) % max(vocabulary - 1, 1) + 1
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so the traced graph masks
    sample = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    Path(output_dir).mkdir(parents=True)
    wrapper = Traced().eval()  # export restores the wrapper's mode on the model: it must be eval too
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(wrapper, tuple(sample[name] for name in names), str(Path(output_dir) / MODEL_FILE),
                              input_names=names, output_names=list(outputs),
                              dynamic_axes={**{name: TOKEN_AXES for name in names}, **outputs},
                              opset_version=OPSET, dynamo=False)
    except Exception as exc:  # torch.onnx raises its own errors, RuntimeError, TypeError ... per architecture
        raise ModelLoadError(f"cannot export {model.config.model_type} to ONNX: {type(exc).__name__}: "
                             f"{str(exc)[:300]}; use engine: transformers") from exc
    finally:
        model.eval()

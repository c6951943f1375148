"""What ``engine: onnxruntime`` serves, checked at submit time without importing it.

The task runners stay the transformers engine's (encode and decode are ours); only the model
call runs on ONNX Runtime, so a task is served when its model exports. The architectures are
those whose torch.onnx (TorchScript) export was measured to match transformers on every
encoder head (``tests/jobs/test_onnxruntime_cache.py``); others fail to export (FNet's FFT) or to
run (CANINE), or need inputs our tokenizer calls do not make (LayoutLM's boxes, LUKE's entities).
"""

from __future__ import annotations

import importlib.util

from jobs.errors import SpecError

PACKAGE = "onnxruntime"
INSTALL_HINT = "pip install 'batchformers[onnx]' (on GPUs: 'batchformers[onnx-gpu]')"
SUPPORTED_MODEL_TYPES = (
    "albert", "bert", "camembert", "convbert", "data2vec-text", "deberta", "deberta-v2", "distilbert",
    "electra", "ernie", "megatron-bert", "mobilebert", "mpnet", "rembert", "roberta", "roformer",
    "xlm-roberta",
)
"""``config.model_type`` values the exporter handles."""
DTYPES = {"auto": "float32", "float32": "float32", "int8": "int8"}
"""The spec's ``dtype`` -> what is exported: float32, or float32 then int8 dynamic quantization (CPU)."""


def available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` are installed (checked at submit time)."""
    return all(importlib.util.find_spec(name) is not None for name in (PACKAGE, "onnx"))


def check_spec(dtype: str) -> None:
    """A SpecError when the package is missing or the dtype is not one the engine runs."""
    if not available():
        raise SpecError("engine", f"engine onnxruntime needs the onnxruntime and onnx packages: {INSTALL_HINT}")
    if dtype not in DTYPES:
        raise SpecError("dtype", f"engine onnxruntime runs dtype {', '.join(DTYPES)}, not {dtype} "
                                 "(the model is exported in float32; int8 quantizes it on the CPU)")


def check_model_type(model_type: str) -> None:
    """A SpecError naming the supported architectures when ``model_type`` is not one of them."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecError("model", f"engine onnxruntime cannot export model type {model_type!r}; supported: "
                                 f"{', '.join(SUPPORTED_MODEL_TYPES)} (or use engine: transformers)")

"""Device, dtype and model loading shared by the task types.

Everything here imports torch/transformers lazily: the producer never needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.engine.base import LoadOptions
from jobs.errors import ModelLoadError, SpecError
from jobs.trust import remote_code

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")
VERY_LARGE_LENGTH = 1_000_000
"""A ``model_max_length`` this large means the tokenizer sets none (transformers' VERY_LARGE_INTEGER)."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} requested but CUDA is not available on this worker "
                "(no GPU, or a CPU build of torch); use device: auto or cpu, or run the job on a GPU worker"
            )
        resolved = torch.device(device)
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ModelLoadError(
                f"device {device!r} requested but this worker sees {count} CUDA device(s) "
                "(check CUDA_VISIBLE_DEVICES: a worker pinned to one GPU sees it as cuda:0)"
            )
        return resolved
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it, else float32."""
    import torch

    if dtype not in DTYPES:
        raise SpecError("dtype", f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    resolved: torch.dtype = getattr(torch, dtype)
    return resolved


def load_tokenizer(options: LoadOptions, **kwargs: Any) -> Any:
    """Load a fast tokenizer, translating hub/file errors into ModelLoadError."""
    from transformers import AutoTokenizer

    trusted = remote_code(options.trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(
            options.model,
            revision=options.revision,
            trust_remote_code=trusted,
            **kwargs,
        )
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        raise ModelLoadError(f"cannot load tokenizer {options.model!r}: {exc}") from exc


def load_model(auto_class: Any, options: LoadOptions) -> tuple[Any, torch.device]:
    """Load ``auto_class.from_pretrained`` onto the resolved device in eval mode.

    Attention is PyTorch's SDPA where the architecture supports it (fused kernels on GPUs),
    else the model's own; runners call the model under ``torch.inference_mode``.
    """
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    arguments = {"revision": options.revision, "trust_remote_code": remote_code(options.trust_remote_code),
                 "dtype": dtype}
    try:
        try:
            model = auto_class.from_pretrained(options.model, attn_implementation="sdpa", **arguments)
        except ValueError as exc:  # "does not support an attention implementation through ... sdpa"
            if "sdpa" not in str(exc).lower():
                raise
            model = auto_class.from_pretrained(options.model, **arguments)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {options.model!r}: {exc}") from exc
    model.to(device)
    model.eval()
    warm_arrow_conversions()
    return model, device


def warm_arrow_conversions() -> None:
    """Pay, with the model load, what pyarrow's first array built from a Python list costs: it imports
    pandas then (to ask whether the list is a Series), ~0.5 s that a worker process's first shard
    paid inside its first decode (issue 21). The worker's preload hides a load; a shard cannot."""
    import pyarrow as pa

    pa.array([])


def model_input_limit(tokenizer: Any, model_config: Any) -> int | None:
    """Longest input the model accepts: the tokenizer's ``model_max_length`` and the position table, if set."""
    limits = [getattr(model_config, "max_position_embeddings", None)]
    if tokenizer.model_max_length < VERY_LARGE_LENGTH:
        limits.append(tokenizer.model_max_length)
    known = [limit for limit in limits if limit]
    return min(known) if known else None

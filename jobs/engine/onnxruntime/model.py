"""The ORT-backed model the task runners call as they call a transformers model.

``OrtModel`` has the surface the encoder runners use: ``model(**tensors)`` returning an object
with the head's outputs (``logits``, ``start_logits`` ...) as torch tensors on the runner's
device, ``model.config`` and ``model.forward``'s signature. So every runner, its encode, decode
and parity rules, is unchanged; only the forward pass runs on ONNX Runtime.

Providers: CUDA when the job's device is a GPU and onnxruntime-gpu is installed, else the CPU.
Threads follow the worker's torch setting (``BATCHFORMERS_TORCH_THREADS``); under the worker's
passive OpenMP policy the intra-op threads do not spin either.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jobs.engine.onnxruntime.export import MODEL_FILE
from jobs.errors import ModelLoadError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OrtModel:
    """An exported model in an ``onnxruntime.InferenceSession``, called like the transformers model."""

    def __init__(self, session: Any, config: Any, device: Any) -> None:
        self.session = session
        self.config = config
        self.device = device
        self.input_names = [node.name for node in session.get_inputs()]
        self.output_names = [node.name for node in session.get_outputs()]

    def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                **unused: Any) -> SimpleNamespace:
        """The head's outputs for one padded batch; absent masks and type ids are what transformers assumes."""
        import numpy as np
        import torch

        ids = input_ids.cpu().numpy()
        given = {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {}
        for name in self.input_names:
            value = given[name]
            if value is None:
                value = np.ones_like(ids) if name == "attention_mask" else np.zeros_like(ids)
            else:
                value = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
            feeds[name] = value.astype(np.int64, copy=False)
        results = self.session.run(self.output_names, feeds)
        return SimpleNamespace(**{name: torch.from_numpy(array).to(self.device)
                                  for name, array in zip(self.output_names, results, strict=True)})

    __call__ = forward

    def eval(self) -> OrtModel:
        return self


def providers_for(device: Any, dtype: str, explicit: bool = True) -> tuple[list[Any], str]:
    """(execution providers, the torch device outputs go to) for the resolved ``device``.

    ``device: auto`` on a GPU worker falls back to the CPU where the GPU cannot serve the job
    (int8, or no onnxruntime-gpu); a GPU the job named is an error saying what to change."""
    import onnxruntime

    if device.type != "cuda":
        return [CPU], "cpu"
    refusal = None
    if dtype == "int8":
        refusal = ("dtype int8 runs on the CPU only with engine onnxruntime (dynamic quantization); "
                   "use device: cpu, or dtype float32 on the GPU")
    elif CUDA not in onnxruntime.get_available_providers():
        refusal = (f"device {device} needs onnxruntime's {CUDA}, which this worker lacks: "
                   "pip install 'batchformers[onnx-gpu]' (onnxruntime-gpu), or use device: cpu")
    if refusal and explicit:
        raise ModelLoadError(refusal)
    if refusal:
        log.warning("batchformers: running on the CPU: %s", refusal)
        return [CPU], "cpu"
    return [(CUDA, {"device_id": device.index or 0}), CPU], str(device)


def session_for(directory: Path, providers: list[Any], threads: int) -> Any:
    """An InferenceSession on ``directory/model.onnx`` with every graph optimisation and ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings about unused initialisers are not the user's
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(directory / MODEL_FILE), options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception classes (Fail, InvalidGraph ...)
        raise ModelLoadError(f"onnxruntime cannot load {directory / MODEL_FILE}: {exc}") from exc

"""Loading a task's model on ONNX Runtime: export once per key into the conversion cache, then a session.

The config is read first: when the cache already holds the export (the usual start of a
worker), the torch weights are never loaded. Otherwise the model loads through transformers
in float32 on the CPU, exports (``export``), and int8 quantizes that export (``quantize``),
each under the cache's lock, so many workers starting together export once.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.engine.base import LoadOptions
from jobs.engine.conversion_cache import converted
from jobs.engine.loading import load_model, resolve_device, warm_arrow_conversions
from jobs.engine.onnxruntime.export import HEAD_OUTPUTS, export_model, onnx_key
from jobs.engine.onnxruntime.model import OrtModel, providers_for, session_for
from jobs.engine.onnxruntime.quantize import quantize_model
from jobs.engine.onnxruntime.support import DTYPES, check_model_type
from jobs.errors import ModelLoadError, SpecError
from jobs.settings import Settings
from jobs.trust import remote_code

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def load_onnx_model(auto_class: str, options: LoadOptions) -> tuple[OrtModel, torch.device]:
    """The task's model (``auto_class``) as an :class:`OrtModel`, and the device its outputs are on."""
    import torch
    import transformers

    if auto_class not in HEAD_OUTPUTS:
        raise ModelLoadError(f"engine onnxruntime does not export {auto_class} models")
    try:
        config = transformers.AutoConfig.from_pretrained(options.model, revision=options.revision,
                                                         trust_remote_code=remote_code(options.trust_remote_code))
    except Exception as exc:  # OSError, ValueError, hub errors, as load_model translates them
        raise ModelLoadError(f"cannot load the config of {options.model!r}: {exc}") from exc
    try:
        check_model_type(config.model_type)
    except SpecError as exc:
        raise ModelLoadError(exc.message) from None
    dtype = DTYPES[options.dtype]
    providers, device = providers_for(resolve_device(options.device), dtype, explicit=options.device != "auto")
    settings = Settings()
    root = settings.resolved_cache_dir()
    key = onnx_key(options.model, config, options.revision, auto_class, "float32")

    def export(output_dir: str) -> None:
        model, _ = load_model(getattr(transformers, auto_class), replace(options, device="cpu", dtype="float32"))
        export_model(model, auto_class, output_dir)

    directory = converted(key, root, export)
    if dtype == "int8":
        float_dir = directory
        directory = converted(replace(key, dtype="int8"), root, lambda output: quantize_model(float_dir, output))
    threads = settings.torch_threads or int(torch.get_num_threads())
    session = session_for(directory, providers, threads)
    log.info("batchformers: %s on onnxruntime %s (%s, %d threads)", options.model, dtype, providers[0], threads)
    warm_arrow_conversions()
    return OrtModel(session, config, torch.device(device)), torch.device(device)


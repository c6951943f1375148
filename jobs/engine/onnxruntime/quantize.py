"""``dtype: int8`` on ONNX Runtime: dynamic quantization of the exported float32 model.

Weights of every MatMul/Gemm become int8 once, per output channel; activations are quantized
per batch at run time (``onnxruntime.quantization.quantize_dynamic``). ``reduce_range`` keeps
weights to 7 bits, which avoids the saturation of CPUs without VNNI (AVX2's u8*s8 products), so
one export scores the same everywhere. Scores change (BENCHMARKS.md publishes by how much, per
case); it runs on the CPU execution provider only.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from jobs.engine.onnxruntime.export import MODEL_FILE


def quantize_model(float_dir: Path, output_dir: str) -> None:
    """Quantize ``float_dir/model.onnx`` into ``output_dir/model.onnx``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    Path(output_dir).mkdir(parents=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs "consider pre-processing" (shape inference) on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(float_dir / MODEL_FILE), str(Path(output_dir) / MODEL_FILE),
                             weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        root.setLevel(level)

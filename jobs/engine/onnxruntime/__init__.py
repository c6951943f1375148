"""ONNX Runtime for the encoder tasks (``engine: onnxruntime``): what it serves (`support`), the export
(`export`), int8 quantization (`quantize`) and the ORT-backed model the task runners call (`model`)."""

"""The runner framework every task type is built on: the task-type interface (`base`), the staged
encode/forward/decode executor (`staged`), batching and OOM splitting (`batching`), model loading
(`loading`, `model_task`), the optional engines' conversion cache (`conversion_cache`) and the
ONNX Runtime engine of the encoder tasks (`onnxruntime`)."""

"""The runner framework every task type is built on: the task-type interface and run options (`base`), the
stage contract (`contract`), the runners' base class (`staged`), one run through the stages (`execution`,
with `decoder`, `padding` and the threaded `pipeline`), batching and OOM splitting (`batching`), model
loading (`loading`) and the load most tasks share (`model_task`), the optional engines' conversion cache
(`conversion_cache`) and the ONNX Runtime engine of the encoder tasks (`onnxruntime`)."""

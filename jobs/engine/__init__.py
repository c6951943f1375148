"""The runner framework every task type is built on: the task-type interface (`base`), the staged
encode/forward/decode executor (`staged`), batching and OOM splitting (`batching`), model loading
(`loading`) and the CTranslate2 generation engine (`ctranslate2`)."""

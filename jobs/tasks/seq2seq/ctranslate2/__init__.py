"""``engine: ctranslate2``: options and device (``options``), the conversion cache (``cache``),
conversion (``convert``) and the runner (``runner``)."""

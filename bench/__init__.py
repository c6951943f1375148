"""Benchmarks: batchformers against what users write today and against the model's own speed.

``python -m bench --quick`` (tiny models, CI) or ``--full`` (base-sized models, BENCHMARKS.md).
Per task (``tasks.py``): the same rows (``data.py``) and model (``models.py``) measured as the
user's baseline (``baselines.py``), as a whole ``batchformers run`` (``measure.py``) and as the
floor, the model calls alone (``floor.py``); ``scenarios.py`` measures the per-shard fixed cost
and many workers on one broker; ``report.py`` writes the tables.
"""

"""Encoder-decoder generation shared by summarization and translation, as transformers 4.57 ran it.

``generation`` replays 4.57's generation settings, ``runner`` runs them on transformers,
``task`` is the base both tasks share (engines, output, ``load``), and ``ctranslate2/``
runs the same settings on CTranslate2 (``engine: ctranslate2``).
"""

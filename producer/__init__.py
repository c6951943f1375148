"""Plan inputs into shards, write the manifest, enqueue, watch, and the CLI.

The public API is :mod:`batchformers` (implemented in :mod:`producer.api`); the modules here are
its parts. Nothing is imported here, so ``import producer.cli`` loads only what a command needs.
"""

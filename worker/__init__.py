"""The Celery app and its thin shard task."""

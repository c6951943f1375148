"""Plan inputs into shards, write the manifest, enqueue, and the CLI."""

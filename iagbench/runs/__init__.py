"""The run engine: runner, run folder, shards, batching, scoring, sources and environment records."""

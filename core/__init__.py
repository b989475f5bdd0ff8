"""Low-level pieces that both ``genbench.bench`` and ``genbench.metrics`` stand on: user errors,
atomic file writes and reads, and the results schema. Nothing here imports the rest of genbench."""

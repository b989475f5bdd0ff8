"""The record: what a run writes (metrics.json, status, sample files, TensorBoard events)."""

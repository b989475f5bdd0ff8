"""Carrying out requests: one run (`run_all`: plan, then execute each run on the engine) or a sweep of
runs as jobs."""

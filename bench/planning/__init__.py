"""Planning: run settings declared once, and pure functions from a request to the fully
resolved runs (one run or a sweep)."""

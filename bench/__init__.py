"""genbench harness: data, the one training loop, evaluation, results and reports."""

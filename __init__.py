"""genbench: a comparative benchmark of generative image models under one protocol.

The repository root is this package: ``genbench.models`` (the families and their registry),
``genbench.metrics`` (the metric registry, feature networks) and ``genbench.bench`` (data, the
training loop, evaluation, results, the report and the ``bench`` command).
"""

__version__ = "0.2.0"

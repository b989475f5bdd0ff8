"""The metric registry. A metric declares what it needs from a model and which values it produces
(name, unit, direction); the evaluator runs only the metrics a model supports and records "n/a"
with the reason for the others.

Modules of this package register their metrics on import; importing the package imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from genbench.core.schema import Output, Value
from genbench.metrics.base import (
    METRICS,
    NEEDS,
    EvalConfig,
    EvalContext,
    Metric,
    missing_capability,
    register_metric,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METRICS",
    "NEEDS",
    "EvalConfig",
    "EvalContext",
    "Metric",
    "Output",
    "Value",
    "missing_capability",
    "register_metric",
]

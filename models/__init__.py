"""Model families. Each module in this package registers itself with ``register_model``; importing
the package imports them all, so adding a family is adding one file."""

import importlib
import pkgutil

from genbench.models.base import MODELS, GenerativeModel, build, get_model_class, model_names, register_model

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "GenerativeModel", "build", "get_model_class", "model_names", "register_model"]

"""Model families. Each module in this package registers itself with ``register_model``; importing
the package imports them all, so adding a family is adding one file. Families from outside genbench
come in as plug-ins (``genbench.models.plugins``: entry points of the group ``genbench.models``, or
``--models package.module:ClassName``)."""

import importlib
import pkgutil

from genbench.models.base import (
    ALIASES,
    MODELS,
    ORIGINS,
    GenerativeModel,
    build,
    get_model_class,
    model_names,
    register_model,
)

NOT_FAMILIES = ("base", "plugins", "gaussians", "unet")  # interface, registry, plug-in loader, helpers

importlib.import_module(f"{__name__}.plugins")  # installs the plug-in finder in the registry
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALIASES",
    "MODELS",
    "ORIGINS",
    "GenerativeModel",
    "build",
    "get_model_class",
    "model_names",
    "register_model",
]

"""Model families from outside genbench: plug-ins.

Two ways in, both validated by ``register_model`` exactly like the built-in families:

* An installed distribution declares an entry point in the group ``genbench.models``, either
  ``tiny = tinypkg.model:TinyModel`` (the class, registered under the entry point's name unless it
  registered itself on import) or ``tiny = tinypkg.model`` (a module that registers its families
  with ``@register_model`` when imported). Entry points are loaded lazily, once, the first time the
  registry is asked for a name it does not hold (``get_model_class``) or the CLI lists the families.
  One broken plug-in is skipped with a warning (``FAILURES`` says why) so that it cannot break the
  others; naming it explicitly is an error that says why.
* ``--models package.module:ClassName`` (or ``get_model_class`` with that spec) imports the module
  and registers the class under its own ``name`` attribute, else its class name lowercased.

To run the contract tests against a plug-in, load it before collection:
``GENBENCH_PLUGINS=tinypkg.model:TinyModel python -m pytest tests/test_contract.py -k tinymodel``
(``GENBENCH_PLUGINS`` takes comma-separated ``module:Class`` specs or entry-point names).
"""

from __future__ import annotations

import importlib
import os
import types
import warnings
from importlib import metadata

from genbench.core.errors import UserError
from genbench.models.base import FINDERS, MODELS, ORIGINS, GenerativeModel, get_model_class, register_model

GROUP = "genbench.models"
ENV_VAR = "GENBENCH_PLUGINS"

FAILURES: dict[str, str] = {}  # entry-point name -> why it was skipped (one line)
_loaded = False


class PluginError(UserError):
    """A plug-in family that cannot be imported or is not a valid GenerativeModel."""


class PluginWarning(UserWarning):
    """An entry-point plug-in was skipped; the others still load."""


def is_spec(name: object) -> bool:
    """Whether ``name`` names a class by ``package.module:ClassName`` rather than a registered name."""
    return isinstance(name, str) and ":" in name


def _problem(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _registered_name(cls: object) -> str | None:
    return next((name for name, registered in MODELS.items() if registered is cls), None)


def _register_class(obj: object, name: str, origin: str, what: str) -> str:
    """Register ``obj`` as a family (or find it registered already); returns its registry name."""
    existing = _registered_name(obj)
    if existing is not None:
        return existing
    if not (isinstance(obj, type) and issubclass(obj, GenerativeModel)):
        raise PluginError(f"{what} is not a GenerativeModel subclass (it is {obj!r})")
    try:
        register_model(name, origin=origin)(obj)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{what} is not a valid model family: {exc}") from None
    return name


def load_spec(spec: str) -> str:
    """Import ``package.module:ClassName`` and register the class under its ``name`` attribute (its
    own, not an inherited one), else its class name lowercased. Returns the registry name; loading
    the same spec again returns the same name."""
    module_name, _, attr = spec.partition(":")
    what = f"model family {spec!r}"
    if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), attr)):
        raise PluginError(f"{what}: expected package.module:ClassName, e.g. mypkg.models:MyModel")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure inside someone else's module is one line for the user
        raise PluginError(f"{what}: cannot import {module_name} ({_problem(exc)})") from None
    if not hasattr(module, attr):
        raise PluginError(f"{what}: module {module_name} has no attribute {attr!r}")
    cls = getattr(module, attr)
    own_name = cls.__dict__.get("name") if isinstance(cls, type) else None
    return _register_class(cls, own_name or attr.lower(), spec, what)


def _load_entry_point(entry_point: metadata.EntryPoint) -> list[str]:
    dist = entry_point.dist.name if entry_point.dist is not None else "unknown distribution"
    what = f"plug-in entry point {entry_point.name!r} ({entry_point.value}, from {dist})"
    origin = f"entry point {dist}"
    before = set(MODELS)
    try:
        obj = entry_point.load()
    except (Exception, SystemExit) as exc:  # a broken plug-in must not break genbench (nor exit it)
        raise PluginError(f"{what} failed to load: {_problem(exc)}") from None
    if isinstance(obj, types.ModuleType):
        # A module that registers its families on import (perhaps imported earlier by a spec).
        names = [n for n, cls in MODELS.items() if n not in before or cls.__module__ == obj.__name__]
        if not names:
            raise PluginError(f"{what}: module {obj.__name__} registered no model family (@register_model)")
    else:
        names = [_register_class(obj, entry_point.name, origin, what)]
    for name in names:
        ORIGINS[name] = origin
    return names


def load_plugins() -> dict[str, str]:
    """Load every entry point of the group ``genbench.models`` and every spec the user names in
    ``GENBENCH_PLUGINS``, once per process. A plug-in that fails is skipped with a PluginWarning;
    returns the failures (entry-point name or spec -> reason)."""
    global _loaded
    if _loaded:
        return FAILURES
    _loaded = True
    loaders = [(e.name, lambda e=e: _load_entry_point(e)) for e in metadata.entry_points(group=GROUP)]
    specs = [item.strip() for item in os.environ.get(ENV_VAR, "").split(",") if is_spec(item.strip())]
    for name, load in [*loaders, *[(spec, lambda spec=spec: load_spec(spec)) for spec in specs]]:
        try:
            load()
        except PluginError as exc:
            FAILURES[name] = str(exc)
            warnings.warn(f"skipped {exc}", PluginWarning, stacklevel=2)
    return FAILURES


def recorded_family(config: dict) -> type[GenerativeModel]:
    """The family a run's config.json names, found among the registered families and the installed
    entry points. A module the file names is never imported (that would run code a file chose): a
    family of a ``module:Class`` spec is found once the user names the spec in ``GENBENCH_PLUGINS``.
    A KeyError saying which family is missing and how to load it otherwise."""
    from genbench.models.base import get_model_class

    name, origin = config["model"], config.get("model_origin")
    if not isinstance(name, str) or is_spec(name):
        raise KeyError(f"model {name!r} is not the name of a model family")
    try:
        return get_model_class(name)
    except KeyError as exc:
        load = f"; to load it from {origin}, set {ENV_VAR}={origin}" if is_spec(origin) else ""
        raise KeyError(f"{exc.args[0]}{load}") from None


def _family(cls: type) -> str:
    name = getattr(cls, "name", cls.__name__)
    return f"model family {name!r} ({ORIGINS.get(name, f'{cls.__module__}:{cls.__qualname__}')})"


def construct(cls: type[GenerativeModel], config) -> GenerativeModel:
    """``cls(config)``, checked: a family whose ``__init__`` raises, or that holds no parameters to
    train, is a one-line PluginError naming it (a plug-in's bug must not be a traceback of ours)."""
    try:
        model = cls(config)
    except Exception as exc:  # any failure inside someone else's code is one line for the user
        raise PluginError(f"{_family(cls)}: building it raised {_problem(exc)}") from None
    if next(iter(model.parameters()), None) is None:
        raise PluginError(
            f"{_family(cls)} has no parameters to train; its networks must be nn.Module attributes"
        )
    return model


def check_samples(model: GenerativeModel, images, size: int):
    """``images`` from ``model.sample(size)``, if they are what the interface promises: a uint8 tensor
    (size, C, H, W) of the model's image shape; a one-line PluginError naming the family otherwise."""
    import torch

    shape = (size, *model.image_shape)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != shape:
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        hint = ""
        if isinstance(images, torch.Tensor) and images.is_floating_point() and images.numel():
            low, high = float(images.min()), float(images.max())
            scaled = "(x * 255)" if high <= 1 else "x"  # floats already in [0, 255] need no scaling
            fix = f"{scaled}.round().clamp(0, 255).to(torch.uint8)"
            hint = f" (floats in [{low:.3g}, {high:.3g}]: return {fix})"
        raise PluginError(
            f"{_family(type(model))}: sample({size}) returned {got}{hint}; samples are uint8 tensors "
            f"{shape} in 0..255"
        )
    return images


def resolve(name: str) -> str:
    """The registry name behind a --models value: a registered name or alias, an entry-point
    plug-in's name, or a ``module:Class`` spec (imported and registered). A PluginError naming the
    problem otherwise (a broken plug-in named explicitly, or an unknown name)."""
    try:
        return get_model_class(name).name
    except KeyError as exc:
        raise PluginError(exc.args[0]) from None


def load_named(text: str) -> list[str]:
    """The plug-ins named by comma-separated specs or entry-point names (``GENBENCH_PLUGINS``),
    loaded; returns their registry names."""
    return [resolve(item.strip()) for item in text.split(",") if item.strip()]


def find(name: str) -> str:
    """The registry name of a family not registered yet: a ``package.module:Class`` spec imported,
    else the entry-point plug-ins loaded (once); KeyError with the reason where a plug-in of that
    name failed to load."""
    if is_spec(name):
        return load_spec(name)
    load_plugins()
    if name in FAILURES:
        raise KeyError(FAILURES[name])
    return name


FINDERS.append(find)

"""genbench: a comparative benchmark of generative image models under one protocol.

The repository root is this package: ``genbench.models`` (the families and their registry),
``genbench.metrics`` (the metric registry, feature networks) and ``genbench.bench`` (data, the
training loop, evaluation, results, the report and the ``bench`` command).

The public Python API, imported lazily so that ``import genbench`` stays light (no torch)::

    from genbench import score_samples
    scores = score_samples("samples.npz")  # any generator's uint8 images, under the quick protocol
    scores["fid_mnist"], scores["fid_mnist_floor"], scores["n_samples"]  # one flat dict

* ``score_samples(images_or_path, ...)``: sample-quality metrics of another generator's images
  with the real-data floors at the same count (``bench eval --samples`` without writing).
* ``build(name, profile)``, ``get_model_class(name)``, ``model_names()``: the model registry
  (``name`` may be ``package.module:ClassName``); ``register_model``, ``GenerativeModel`` and
  ``TrainConfig`` to write a family of one's own.
* ``load_dataset(name, data_dir)`` (``load_mnist``): checked splits as uint8 tensors.
* ``load_run(run_dir, device)``: a trained run's model with the weights it was evaluated with.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# A library's logging is the program's to show (genbench.core.log): `bench` shows it, an API call does not.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> the module that defines it
_API = {
    "score_samples": "genbench.bench.commands.external",
    "build": "genbench.models.base",
    "get_model_class": "genbench.models.base",
    "model_names": "genbench.models.base",
    "register_model": "genbench.models.base",
    "GenerativeModel": "genbench.models.base",
    "TrainConfig": "genbench.models.base",
    "load_dataset": "genbench.bench.engine.data",
    "load_mnist": "genbench.bench.engine.data",
    "load_run": "genbench.bench.commands.sampling",
}
_SUBPACKAGES = ("core", "models", "metrics", "bench")

__all__ = [
    "GenerativeModel",
    "TrainConfig",
    "build",
    "get_model_class",
    "load_dataset",
    "load_mnist",
    "load_run",
    "model_names",
    "register_model",
    "score_samples",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from genbench.bench.commands.external import score_samples
    from genbench.bench.commands.sampling import load_run
    from genbench.bench.engine.data import load_dataset, load_mnist
    from genbench.models.base import (
        GenerativeModel,
        TrainConfig,
        build,
        get_model_class,
        model_names,
        register_model,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_SUBPACKAGES})

"""The real-data feature cache: numbers only.

The features a feature network extracts from a real image subset (the FID reference) are cached as
a ``.npz`` of float32 arrays, read back with ``allow_pickle=False``: a cache file can hold numbers
and nothing that runs, whoever put it in a shared results folder. (torch-fidelity's own cache is
unpickled in full when read, so it is never used.)

Each file holds its key: the feature network (name, extractor, SHA-256 of the weights, layers), the
dataset's name, the split, the subset seed, the count and the SHA-256 of the images' pixels, and
the torch-fidelity version that extracted them. A file that is truncated, foreign, or of another
key is recomputed and replaced, with a one-line notice on stderr; it is never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_fidelity
from torch import Tensor

from genbench.core import files
from genbench.core.errors import UserError

if TYPE_CHECKING:
    from genbench.metrics.fidelity import FeatureNetwork

CACHE_FORMAT = "genbench-features-v1"
KEY = "key"  # the array holding the key as JSON text (a unicode array: no pickle needed)


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """Where one real image set's features are cached and which protocol subset it is."""

    folder: Path
    dataset: str
    split: str
    subset_seed: int


def cache_name(dataset: str, split: str, n: int, subset_seed: int, network: FeatureNetwork) -> str:
    """The file of a real subset's features. The weights' checksum is in the name so that retrained
    weights never meet stale features; the whole key is inside the file."""
    return f"genbench-{dataset}-{split}-n{n}-s{subset_seed}-{network.name}-{network.sha256[:12]}.npz"


def cache_key(images: Tensor, network: FeatureNetwork, cache: FeatureCache, layers: tuple[str, ...]) -> dict:
    """Everything the cached features depend on."""
    pixels = images.detach().cpu().contiguous().numpy()
    return {
        "format": CACHE_FORMAT,
        "dataset": cache.dataset,
        "split": cache.split,
        "subset_seed": cache.subset_seed,
        "n": len(images),
        "images_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "image_shape": list(images.shape[1:]),
        "network": network.name,
        "extractor": network.extractor,
        "sha256": network.sha256,
        "layers": list(layers),
        "torch_fidelity": torch_fidelity.__version__,
    }


def _array_name(layer: str) -> str:
    return f"features_{layer}"


def _notice(path: Path, why: str) -> None:
    print(f"note: ignoring the feature cache file {path} ({why}); recomputing it", file=sys.stderr)


def read(path: Path, key: dict) -> dict[str, Tensor] | None:
    """The features in ``path`` when it is a whole cache file of exactly ``key``, else None (with a
    notice when there was a file)."""
    if not path.exists():
        return None
    try:
        with files.open_regular(path) as f, np.load(f, allow_pickle=False) as stored:
            found = json.loads(str(stored[KEY]))
            if found != key:
                theirs = found if isinstance(found, dict) else {}
                differs = sorted(k for k in set(key) | set(theirs) if key.get(k) != theirs.get(k))
                _notice(path, f"made for other inputs: differs in {', '.join(differs)}")
                return None
            arrays = {layer: stored[_array_name(layer)] for layer in key["layers"]}
    except (UserError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # ValueError covers a pickle (refused by allow_pickle=False) and bad JSON; UserError a
        # folder, FIFO or device in the file's place.
        _notice(path, f"unreadable: {type(exc).__name__}")
        return None
    for layer, array in arrays.items():
        if array.dtype != np.float32 or array.ndim != 2 or len(array) != key["n"]:
            _notice(path, f"layer {layer} holds {array.dtype} {array.shape}, not float32 ({key['n']}, d)")
            return None
        if not np.isfinite(array).all():
            _notice(path, f"layer {layer} holds non-finite numbers")
            return None
    return {layer: torch.from_numpy(array) for layer, array in arrays.items()}


def write(path: Path, key: dict, features: dict[str, Tensor]) -> None:
    """Write the cache file atomically. A cache that cannot be written costs only time: a notice."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {_array_name(layer): features[layer].numpy() for layer in key["layers"]}
    np.savez(buffer, **{KEY: np.array(json.dumps(key, sort_keys=True))}, **arrays)
    try:
        files.write_bytes(path, buffer.getvalue())
    except UserError as exc:
        print(f"note: feature cache not written: {exc}", file=sys.stderr)


def cached_features(
    images: Tensor,
    network: FeatureNetwork,
    cache: FeatureCache,
    layers: tuple[str, ...],
    extract: Callable[[Tensor], dict[str, Tensor]],
) -> dict[str, Tensor]:
    """``extract(images)`` ({layer: float32 (N, d)}), read from the cache when a valid file is there
    and written to it when not."""
    key = cache_key(images, network, cache, layers)
    path = Path(cache.folder) / cache_name(
        cache.dataset, cache.split, len(images), cache.subset_seed, network
    )
    features = read(path, key)
    if features is None:
        extracted = extract(images)
        features = {layer: extracted[layer].to(torch.float32).contiguous() for layer in layers}
        write(path, key, features)
    return features

"""Small synthetic CIFAR-10 files in CIFAR's own format, so that torchvision's real reader runs on them.

The real files are Python 2 pickles of dicts whose str keys read back as str under torchvision's
``encoding="latin1"`` (they would read back as b"data" under ``encoding="bytes"``): "data" uint8
(N, 3072) (1024 red, then green, then blue values, rows in order), "labels" a list of ints, plus
"batch_label" and "filenames"; batches.meta holds "label_names".
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from genbench.bench.engine.data import CIFAR10_FILES

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_images(n: int, seed: int) -> np.ndarray:
    """Smooth colour blobs, uint8 (n, 3, 32, 32): image-like spread, unlike white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8).numpy()


def write_fake_cifar(root: Path, per_batch: int = 64) -> Path:
    """<root>/cifar-10-batches-py/ with five training batches and a test batch of ``per_batch``
    images each, labelled i % 10; returns the folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for seed, name in enumerate(n for n in CIFAR10_FILES if n != "batches.meta"):
        images = fake_images(per_batch, seed)
        batch = {
            "batch_label": f"synthetic {name}",
            "labels": [(seed + i) % 10 for i in range(per_batch)],
            "data": images.reshape(per_batch, 3 * 32 * 32),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder

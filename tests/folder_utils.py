"""Small folders of generated PNG images, two classes, greyscale or RGB, for folder-dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def shapes(n: int, size: int, kind: str, seed: int) -> np.ndarray:
    """uint8 (n, size, size): bright discs or squares at random places on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cx, cy = rng.integers(size // 4, 3 * size // 4, size=2)
        r = rng.integers(size // 8, size // 4) + 1
        mask = (
            (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            if kind == "disc"
            else (abs(xx - cx) < r) & (abs(yy - cy) < r)
        )
        out.append((mask * 200 + rng.integers(0, 40, size=mask.shape)).astype(np.uint8))
    return np.stack(out)


def make_folder(root: Path, mode: str = "L", n: int = 24, size: int = 16, seed: int = 0) -> Path:
    """``root`` with class subfolders disc/ and square/ of ``n`` PNGs each; returns ``root``."""
    for k, kind in enumerate(("disc", "square")):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i, gray in enumerate(shapes(n, size, kind, seed + k)):
            pixels = gray if mode == "L" else np.stack([gray, gray // 2, 255 - gray], axis=-1)
            Image.fromarray(pixels).save(root / kind / f"{i:03d}.png")
    return root

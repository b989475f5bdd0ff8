"""Figures of images: sample grids, latent interpolations and the nearest training images of
samples. Grids go through the suite's one grid function, ``genbench.core.files.image_grid``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genbench.bench.report.figures import Rendered, Skipped, figure, render, style
from genbench.bench.report.load import Run, timestamp
from genbench.core.errors import UserError
from genbench.core.files import image_grid

INTERPOLATION_CAPTION = "spherical interpolation (slerp) between prior latents"
SAMPLES_CAPTION = (
    "Uncurated samples of the default sample mode, one run per model (lowest seed). Look for sharp strokes, "
    "all ten digit classes (mode coverage) and artefacts such as blur or speckle noise."
)
INTERPOLATIONS_CAPTION = (
    f"Each row decodes a {INTERPOLATION_CAPTION}. A smooth latent space morphs one digit into another "
    "through plausible digits; abrupt jumps or non-digit blends show holes in it."
)
NEAREST_CAPTION = (
    "Each generated sample above its closest training image by L2 distance in pixel space (pixels scaled "
    "to [0, 1], d under each pair). Near-copies (d much smaller than other models') suggest memorisation. "
    "L2 in pixel space is a coarse similarity."
)


def representative(runs: Sequence[Run]) -> dict[str, Run]:
    """One run per model for image panels: the lowest seed, then the newest."""
    chosen: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.seed if isinstance(r.seed, int) else 1 << 30, -timestamp(r))):
        chosen.setdefault(run.model, run)
    return dict(sorted(chosen.items()))


def load_samples(run: Run):
    """uint8 (N, C, H, W) from samples.pt, or None."""
    import torch

    path = run.path / "samples.pt"
    try:
        samples = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable tensor file costs the report a panel, not the report
        return None
    ok = isinstance(samples, torch.Tensor) and samples.dim() == 4 and samples.dtype == torch.uint8
    ok = ok and samples.layout == torch.strided and samples.device.type == "cpu" and len(samples) > 0
    return samples if ok else None  # no images: no panel (and nothing to divide by)


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    except (OSError, ValueError):  # a broken image costs the report a panel
        return None


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()


def plot_samples(group: str, runs: Sequence[Run], levels: int) -> Rendered | Skipped:
    title = f"Samples ({group})"
    panels = []
    for model, run in representative(runs).items():
        samples = load_samples(run)
        image = image_grid(samples[:64], levels=levels).numpy() if samples is not None else None
        if image is None and (run.path / "samples.png").is_file():
            image = _read_png(run.path / "samples.png")
        if image is not None:
            panels.append((model, run, image))
    if not panels:
        return Skipped(title, "no samples.pt or samples.png in these runs")
    with style():
        fig = figure(3.3 * len(panels), 4.0)
        for ax, (model, run, image) in zip(
            fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
        ):
            _show(ax, image)
            ax.set_title(f"{model} · seed {run.seed}", fontsize=12)
        heading = f"{group}: the first 64 evaluated samples per model (uncurated)"
        return render(fig, f"samples_{group}", title, heading, SAMPLES_CAPTION)


def plot_interpolations(group: str, runs: Sequence[Run]) -> Rendered | Skipped:
    title = f"Latent interpolations ({group})"
    panels = []
    for model, run in representative(runs).items():
        path = run.path / "interpolation.png"
        image = _read_png(path) if path.is_file() else None
        if image is not None:
            panels.append((model, run, image))
    if not panels:
        return Skipped(
            title, "no model in this group wrote interpolation.png (only models with a latent space do)"
        )
    # Wide strips (a few rows of many steps) stack; squarish ones sit side by side, up to three a row.
    aspect = max(p[2].shape[0] / p[2].shape[1] for p in panels)
    ncols = 1 if aspect < 0.45 else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = 10.0 if ncols == 1 else 4.6
    with style():
        fig = figure(width * ncols, nrows * (width * aspect + 0.45) + 0.5)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (model, run, image) in zip(axes, panels, strict=False):
            _show(ax, image)
            ax.set_title(f"{model} · seed {run.seed}", fontsize=12)
        for ax in axes[len(panels) :]:
            fig.delaxes(ax)
        heading = f"{group}: latent interpolations, each row a {INTERPOLATION_CAPTION}"
        return render(fig, f"interpolation_{group}", title, heading, INTERPOLATIONS_CAPTION)


def nearest_training_images(
    samples: np.ndarray, train: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """For uint8 samples (n, ...) and training images (N, ...) of the same shape: index and L2
    distance (pixels scaled to [0, 1]) of each sample's nearest training image."""
    a = samples.reshape(len(samples), -1).astype(np.float64) / 255.0  # (n, D)
    a_sq = (a**2).sum(1)  # (n,)
    best_d = np.full(len(a), np.inf)
    best_i = np.zeros(len(a), dtype=np.int64)
    for start in range(0, len(train), chunk):
        b = train[start : start + chunk].reshape(-1, a.shape[1]).astype(np.float64) / 255.0  # (c, D)
        d2 = a_sq[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T  # (n, c)
        i = d2.argmin(1)
        d = d2[np.arange(len(a)), i]
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_i, np.sqrt(np.clip(best_d, 0.0, None))


def load_training_images(data_dir: Path | None, dataset: str):
    """The training images uint8 (N, C, H, W) of the group's dataset, or None and the reason; never
    downloads."""
    from genbench.bench.engine import data as bench_data

    try:
        return bench_data.load_dataset(dataset, data_dir, download_missing=False).train, ""
    except UserError as exc:
        return None, str(exc)


def plot_nearest_neighbours(
    group: str, runs: Sequence[Run], train, why_not: str, levels: int, n: int = 8
) -> Rendered | Skipped:
    import torch

    title = f"Nearest training images ({group})"
    if train is None:
        return Skipped(title, f"training images not available ({why_not})")
    flat = train.cpu().numpy()
    panels = []
    for model, run in representative(runs).items():
        samples = load_samples(run)
        if samples is not None and samples.shape[1:] == train.shape[1:]:
            index, distance = nearest_training_images(samples[:n].numpy(), flat)
            pairs = torch.cat([samples[:n], train[torch.from_numpy(index)].cpu()])  # (2n, C, H, W)
            panels.append(
                (model, run, image_grid(pairs, nrow=len(index), levels=levels, pad=3).numpy(), distance)
            )
    if not panels:
        return Skipped(title, "no samples.pt of the training images' shape in these runs")
    with style():
        fig = figure(1.15 * n + 1.6, 2.9 * len(panels) + 0.5)
        for ax, (model, run, mosaic, distance) in zip(
            fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True
        ):
            # One image per model (not 2 x n axes): cheap to lay out, and pairs stay aligned.
            ax.imshow(
                mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest"
            )
            ax.grid(False)
            width = mosaic.shape[1] / len(distance)
            ax.set_xticks([(j + 0.5) * width for j in range(len(distance))], [f"d={d:.2f}" for d in distance])
            ax.set_yticks([mosaic.shape[0] / 4, 3 * mosaic.shape[0] / 4], ["sample", "nearest\ntrain"])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"{model} (seed {run.seed})", fontsize=12)
        heading = f"{group}: generated samples (top) and their nearest training images (bottom)"
        return render(fig, f"nearest_{group}", title, heading, NEAREST_CAPTION)

"""MNIST as resident uint8 tensors, checked against known checksums, split with a fixed seed.

The whole set lives on the training device as one uint8 tensor per split; batches are index slices
of a seeded permutation (no PIL transforms, no DataLoader workers).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from genbench.core.errors import UserError
from genbench.core.files import file_sha256

ENV_VAR = "GENBENCH_DATA"
DEFAULT_DIR = Path("data")
SPLIT_SEED = 0
N_VALIDATION = 5000

# name -> (size in bytes, sha256), from the MNIST README beside the shared copy.
MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
OFFLINE_HINT = f"pass --data-dir (or set {ENV_VAR}) to a folder holding MNIST/raw/"


@dataclasses.dataclass(frozen=True)
class MNIST:
    """The three splits, uint8 (N, 1, 28, 28), and their labels (int64), on one device."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor
    val_labels: Tensor
    test_labels: Tensor
    name: str = "mnist"  # the dataset's registry name, recorded in every protocol
    levels: int = 256  # intensity levels per pixel; pixels are integers 0..levels-1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $GENBENCH_DATA, else ./data."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def raw_dir(root: Path) -> Path:
    """torchvision's layout is <root>/MNIST/raw; a path to MNIST/ or to raw/ itself is accepted too."""
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if (candidate / next(iter(MNIST_FILES))).exists():
            return candidate
    return root / "MNIST" / "raw"


def verify(raw: Path) -> None:
    """Raise a one-line UserError naming the first missing, truncated or corrupt file."""
    for name, (size, sha) in MNIST_FILES.items():
        path = raw / name
        if not path.is_file():
            raise UserError(f"MNIST file missing: {path}; {OFFLINE_HINT}")
        if path.stat().st_size != size or file_sha256(path) != sha:
            raise UserError(
                f"MNIST file corrupt or truncated: {path} (checksum mismatch); "
                f"delete it to re-download, or {OFFLINE_HINT}"
            )


def download(root: Path) -> None:
    """Fetch MNIST through torchvision into <root>/MNIST/raw, with an actionable error offline."""
    import torchvision

    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    except Exception as exc:  # network, DNS, HTTP and disk errors all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not download MNIST into {root} ({reason}); no network? {OFFLINE_HINT}"
        ) from None


def _read(raw: Path) -> dict[str, Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    return {
        "train_images": read_image_file(str(raw / "train-images-idx3-ubyte")),
        "train_labels": read_label_file(str(raw / "train-labels-idx1-ubyte")),
        "test_images": read_image_file(str(raw / "t10k-images-idx3-ubyte")),
        "test_labels": read_label_file(str(raw / "t10k-labels-idx1-ubyte")),
    }


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download_missing: bool = True,
) -> MNIST:
    """Checked MNIST splits on ``device``: 55k train / 5k validation (fixed seed) / 10k test."""
    root = resolve_data_dir(data_dir)
    raw = raw_dir(root)
    missing = [n for n in MNIST_FILES if not (raw / n).exists()]
    if missing and data_dir is not None and not root.exists():
        raise UserError(f"data directory does not exist: {root}; {OFFLINE_HINT}")
    if missing and download_missing:
        download(root)
        raw = raw_dir(root)
    verify(raw)
    arrays = _read(raw)
    perm = torch.randperm(len(arrays["train_images"]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_idx, val_idx = perm[:-N_VALIDATION], perm[-N_VALIDATION:]
    images = arrays["train_images"].unsqueeze(1)  # (60000, 1, 28, 28) uint8
    test = arrays["test_images"].unsqueeze(1)  # (10000, 1, 28, 28) uint8
    return MNIST(
        train=images[train_idx].contiguous().to(device),
        val=images[val_idx].contiguous().to(device),
        test=test.contiguous().to(device),
        train_labels=arrays["train_labels"][train_idx].to(device),
        val_labels=arrays["train_labels"][val_idx].to(device),
        test_labels=arrays["test_labels"].to(device),
    )


def epoch_order(n: int, seed: int, epoch: int, device: str | torch.device = "cpu") -> Tensor:
    """The data order of one epoch: a permutation that depends only on (seed, epoch), so a resumed
    run recomputes it instead of storing it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def batches(
    data: Tensor, batch_size: int, order: Tensor | None = None, drop_last: bool = False
) -> Iterator[Tensor]:
    """Index slices of a resident tensor, in ``order`` (a permutation) or in sequence."""
    n = len(data)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield data[start : start + batch_size]
        else:
            yield data[order[start : start + batch_size]]

"""Folders of images as datasets (``--dataset folder:PATH``) and as reference sets.

A folder holds PNG or JPEG files of one size, all greyscale (mode L) or all RGB, directly or in
class subfolders (one level: the subfolder is the label, in sorted name order; files directly in
the folder are one class). Files are read in sorted path order. The decoded images are cached as
one uint8 array in a ``.npz`` (read with ``allow_pickle=False``) named by the SHA-256 of the
folder's manifest (each file's relative path and the SHA-256 of its bytes), so a folder is decoded
once and a changed file is a new cache entry. The cache lives under ``$GENBENCH_CACHE``, else
``$XDG_CACHE_HOME/genbench``, else ``~/.cache/genbench``.

Splits: a fixed-seed permutation of all images holds out a tenth (at least one) as the test set;
bench.engine.data carves the validation split out of the rest as it does for every dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genbench.core.errors import UserError
from genbench.core.files import write_bytes

SUFFIXES = (".png", ".jpg", ".jpeg")
PREFIX = "folder:"  # --dataset folder:PATH
MAX_PIXELS = 4096 * 4096  # no dataset image is near this; a bigger image is a decompression bomb
SPLIT_SEED = 0
TEST_FRACTION = 10  # one image in ten is a test image
MIN_IMAGES = 3  # one each for train, validation and test
CACHE_FORMAT = "genbench-image-folder-v1"
MODES = {"L": "greyscale (L)", "RGB": "RGB"}


def decode_image(path: Path, payload: bytes, kind: str = "image") -> np.ndarray:
    """One image file's pixels, uint8 (H, W) for greyscale or (H, W, 3) for RGB; a one-line
    UserError naming the file when it is unreadable, too large, or of another mode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UserError(f"{path} is {image.width}x{image.height}: far larger than a dataset's images")
            image.load()
            mode, pixels = image.mode, np.asarray(image)
    except Image.DecompressionBombError:  # PIL's own limit, before the size can be read
        raise UserError(f"{path} is far larger than a dataset's images (a decompression bomb?)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read {path}: not a readable {kind} ({type(exc).__name__})") from None
    if mode not in MODES:
        raise UserError(f"{path} is an image of mode {mode}: save 8-bit greyscale (L) or RGB images")
    return pixels


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """A folder's images, uint8 (N, C, H, W), their labels (int64) and class names, and the
    manifest digest that keys them."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    sha256: str


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Where a folder dataset comes from: the folder, and the digest of its contents when parsed."""

    path: Path
    sha256: str

    @property
    def title(self) -> str:
        return f"image folder {self.path}"

    def read(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The images split as a dataset's files are: (train file, labels, test file, labels)."""
        found = read_folder(self.path)
        if found.sha256 != self.sha256:
            raise UserError(f"{self.path} changed since it was read (its files' checksums differ); run again")
        return split_test(found.images, found.labels)


def dataset_name(path: Path) -> str:
    """``folder-<basename>``, in the characters a run id allows."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).resolve().name).strip("-.") or "images"
    return f"folder-{base}"


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass folder:PATH to a folder of PNG or JPEG files")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in SUFFIXES and p.is_file() and len(p.relative_to(folder).parts) <= 2
    )
    if not paths:
        raise UserError(f"{folder} holds no PNG or JPEG files (directly or in class subfolders)")
    return paths


def _manifest(folder: Path, paths: list[Path]) -> tuple[str, list[bytes]]:
    digest, payloads = hashlib.sha256(), []
    for p in paths:
        try:
            payload = p.read_bytes()
        except OSError as exc:
            raise UserError(
                f"cannot read {p} ({exc.strerror or exc}); fix its permissions or remove it"
            ) from None
        payloads.append(payload)
        digest.update(f"{hashlib.sha256(payload).hexdigest()}  {p.relative_to(folder).as_posix()}\n".encode())
    return digest.hexdigest(), payloads


def cache_dir() -> Path:
    if os.environ.get("GENBENCH_CACHE"):
        return Path(os.environ["GENBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genbench"


def _cache_path(sha256: str) -> Path:
    return cache_dir() / "image-folders" / f"{sha256}.npz"


def _read_cache(path: Path, sha256: str) -> FolderImages | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["format"]) != CACHE_FORMAT or str(stored["sha256"]) != sha256:
                return None
            images, labels = stored["images"], stored["labels"]
            classes = tuple(str(c) for c in stored["classes"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, a pickle (refused), truncated or foreign: decoded again
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        return None
    return FolderImages(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes, sha256)


def _write_cache(path: Path, found: FolderImages) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer, format=np.array(CACHE_FORMAT), sha256=np.array(found.sha256), images=found.images.numpy(),
        labels=found.labels.numpy(), classes=np.array(found.classes, dtype=str),
    )  # fmt: skip
    try:
        write_bytes(path, buffer.getvalue())
    except UserError as exc:  # a cache that cannot be written costs only time
        print(f"note: image folder cache not written: {exc}", file=sys.stderr)


def _decode(folder: Path, paths: list[Path], payloads: list[bytes], sha256: str) -> FolderImages:
    arrays = []
    for p, payload in zip(paths, payloads, strict=True):
        pixels = decode_image(p, payload)
        if arrays and pixels.shape != arrays[0].shape:
            first = arrays[0].shape
            if pixels.shape[:2] != first[:2]:
                raise UserError(
                    f"{p} is {pixels.shape[1]}x{pixels.shape[0]}, but {paths[0]} is {first[1]}x{first[0]}: "
                    "a folder dataset needs images of one size"
                )
            raise UserError(
                f"{p} is {MODES['RGB' if pixels.ndim == 3 else 'L']}, but {paths[0]} is "
                f"{MODES['RGB' if len(first) == 3 else 'L']}: a folder dataset needs one mode"
            )
        arrays.append(pixels)
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    images = (
        torch.from_numpy(stacked).unsqueeze(1)
        if stacked.ndim == 3
        else torch.from_numpy(stacked).permute(0, 3, 1, 2)
    )
    groups = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) == 2 else "" for p in paths]
    classes = tuple(sorted(set(groups)))
    labels = torch.tensor([classes.index(g) for g in groups], dtype=torch.int64)
    return FolderImages(images.contiguous(), labels, classes, sha256)


def read_folder(folder: Path) -> FolderImages:
    """The folder's images, from the cache when its manifest is there, else decoded and cached."""
    folder = Path(folder)
    paths = _files(folder)
    sha256, payloads = _manifest(folder, paths)
    cached = _read_cache(_cache_path(sha256), sha256)
    if cached is not None:
        return cached
    found = _decode(folder, paths, payloads, sha256)
    if len(found.images) < MIN_IMAGES:
        raise UserError(f"{folder} holds {len(found.images)} image(s); a dataset needs at least {MIN_IMAGES}")
    _write_cache(_cache_path(sha256), found)
    return found


def split_test(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded tenth (at least one image) held out as the test set: (rest, labels, test, labels)."""
    n = len(images)
    n_test = max(1, n // TEST_FRACTION)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    rest, test = perm[:-n_test], perm[-n_test:]
    return images[rest], labels[rest], images[test], labels[test]

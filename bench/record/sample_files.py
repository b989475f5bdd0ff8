"""Sample files: the forms in which a set of generated images leaves genbench (``bench sample``)
and comes in from any generator (``bench eval --samples``), read and checked completely before
anything is computed or written.

Accepted: a ``.npz`` (its one array, or the one named by ``key``), a ``.npy`` (both read with
``allow_pickle=False``), a ``.pt``/``.pth`` tensor or dict of tensors (``torch.load`` with
``weights_only=True``), or a folder of ``.png`` files (greyscale or RGB, read in sorted name order).
Arrays hold integer pixels 0..levels-1 as ``(N, C, H, W)``, ``(N, H, W)`` or channels-last
``(N, H, W, C)`` with C = 1 or 3 (accepted with a note).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genbench.core.errors import UserError
from genbench.core.files import file_sha256, open_regular, save_image_grid, write_bytes

ARRAY_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
NPZ_KEY = "images"  # the array name `bench sample` writes
PNG_GRID_MAX = 256  # more samples than this go to a .npz: a grid of them is too large to look at
SAMPLE_LIMIT = 1_000_000  # `bench sample -n`: 100 times an FID protocol's 10k; more is several calls
MAX_PNG_PIXELS = 4096 * 4096  # no dataset image is near this; a bigger PNG is a decompression bomb
ACCEPTED = "a .npz, .npy or .pt array of images, or a folder of .png files"
TO_UINT8 = "convert to uint8 0..255 first, e.g. (x * 255).round().clip(0, 255).astype(np.uint8)"


class SampleFileUsageError(UserError):
    """A path or option that cannot name samples at all: exit status 2, like click's usage errors."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class Samples:
    """Images as read (integer (N, C, H, W), not yet checked against a dataset) and their provenance."""

    images: Tensor
    source: dict[str, Any]  # metrics.json "source" (see read_samples)
    notes: tuple[str, ...] = ()  # what was assumed while reading, one line each


def read_samples(path: Path, key: str | None = None) -> Samples:
    """Read a sample file or folder (module docstring). ``source``: kind "external", the resolved
    path, its SHA-256 (a folder: of its ``sha256sum *.png`` manifest), the image count, the format."""
    path = Path(path)
    if path.is_dir():
        if key is not None:
            raise SampleFileUsageError(f"--key names an array inside a .npz or .pt file; {path} is a folder")
        array, sha256, fmt = _read_png_folder(path)
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        if key is not None and path.suffix.lower() == ".npy":
            raise SampleFileUsageError(
                f"--key names an array inside a .npz or .pt file; {path} holds one array"
            )
        array, fmt = _read_array_file(path, key)
        sha256 = file_sha256(path)
    elif path.exists():
        raise SampleFileUsageError(f"cannot read samples from {path}: expected {ACCEPTED}")
    else:
        raise SampleFileUsageError(f"{path} does not exist")
    images, notes = as_nchw(array, path)
    source = {"kind": "external", "path": str(path.resolve()), "sha256": sha256, "count": len(images)}
    return Samples(images, source | {"format": fmt}, tuple(notes))


def _read_array_file(path: Path, key: str | None) -> tuple[Tensor, str]:
    suffix = path.suffix.lower()
    try:
        with open_regular(path) as f:  # a FIFO or device would be read forever
            if suffix == ".npy":
                return _from_numpy(np.load(f, allow_pickle=False), path), "npy"
            if suffix == ".npz":
                with np.load(f, allow_pickle=False) as archive:
                    name = _pick(list(archive.files), key, path)
                    return _from_numpy(archive[name], path), f"npz[{name}]"
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:  # np.load and torch.load fail on corrupt or foreign files in many ways
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {path}: not a readable {suffix} file ({reason})") from None
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        name = _pick(list(tensors), key, path)
        return tensors[name], f"pt[{name}]"
    if key is not None:
        raise SampleFileUsageError(f"--key {key}: {path} holds one tensor, not a dict of them; drop --key")
    if not isinstance(obj, Tensor):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a tensor of images: save a tensor")
    return obj, "pt"


def _pick(names: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in names:
            raise SampleFileUsageError(
                f"--key {key}: {path} has no such array; it holds {', '.join(names) or 'none'}"
            )
        return key
    if len(names) != 1:
        listed = ", ".join(names) if names else "no arrays"
        raise SampleFileUsageError(f"{path} holds {listed}; name the images with --key")
    return names[0]


def _from_numpy(array: np.ndarray, path: Path) -> Tensor:
    if array.dtype.kind not in "uif":  # bool, complex, strings, records: not pixels
        raise UserError(f"{path}: images are {array.dtype}, expected integer pixels; {TO_UINT8}")
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:  # torch has few kernels for uint16..64
        high = int(array.max()) if array.size else 0
        if high > 255:
            raise UserError(f"{path}: pixel values reach {high}, but pixels are integers 0..255; {TO_UINT8}")
        array = array.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_png_folder(folder: Path) -> tuple[np.ndarray, str, str]:
    from PIL import Image, UnidentifiedImageError

    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not paths:
        raise UserError(f"{folder} holds no .png files: expected {ACCEPTED}")
    images, manifest = [], hashlib.sha256()
    for p in paths:
        try:
            payload = p.read_bytes()
            with Image.open(io.BytesIO(payload)) as image:
                if image.width * image.height > MAX_PNG_PIXELS:
                    raise UserError(
                        f"{p} is {image.width}x{image.height}: far larger than a dataset's images"
                    )
                image.load()
                mode, pixels = image.mode, np.asarray(image)
        except Image.DecompressionBombError:  # PIL's own limit, before the size can be read
            raise UserError(f"{p} is far larger than a dataset's images (a decompression bomb?)") from None
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise UserError(f"cannot read {p}: not a readable PNG ({type(exc).__name__})") from None
        if mode not in ("L", "RGB"):
            raise UserError(f"{p} is a PNG of mode {mode}: save 8-bit greyscale (L) or RGB PNGs")
        if images and pixels.shape != images[0].shape:
            raise UserError(
                f"{p} is {pixels.shape}, but {paths[0].name} is {images[0].shape}: one size for all"
            )
        images.append(pixels)
        manifest.update(f"{hashlib.sha256(payload).hexdigest()}  {p.name}\n".encode())
    return np.stack(images), manifest.hexdigest(), f"png folder ({len(paths)} files)"


def as_nchw(array: Tensor | np.ndarray, path: Path) -> tuple[Tensor, list[str]]:
    """(N, C, H, W) integers from (N, C, H, W), (N, H, W) or (N, H, W, C); a one-line error otherwise."""
    if isinstance(array, Tensor) and (array.layout != torch.strided or array.device.type != "cpu"):
        raise UserError(f"{path}: a {array.layout} tensor on {array.device}; save a dense tensor of images")
    if isinstance(array, Tensor) and array.dtype in (torch.uint16, torch.uint32, torch.uint64):
        array = _from_numpy(array.numpy(), path)
    images = torch.as_tensor(array)
    if images.is_floating_point() and images.numel():  # the hint's scale follows the values' range
        high = float(images.max())
        scaled = "x" if high > 1 else "x * 255"
        raise UserError(
            f"{path}: images are {images.dtype}, expected integer pixels (these reach {high:.4g}); "
            f"convert to uint8 0..255 first, e.g. ({scaled}).round().clip(0, 255).astype(np.uint8)"
        )
    if images.is_floating_point() or images.is_complex() or images.dtype == torch.bool:
        raise UserError(f"{path}: images are {images.dtype}, expected integer pixels; {TO_UINT8}")
    notes = []
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)
    elif images.dim() == 4 and images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
        notes.append(f"{path.name}: read {tuple(images.shape)} as channels-last (N, H, W, C)")
        images = images.permute(0, 3, 1, 2)  # (N, C, H, W)
    elif images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(
            f"{path}: images of shape {tuple(images.shape)}; expected (N, C, H, W), (N, H, W) or "
            "(N, H, W, C) with C = 1 or 3"
        )
    if len(images) == 0:
        raise UserError(f"{path} holds no images (shape {tuple(images.shape)})")
    return images.contiguous(), notes


def check_images(samples: Samples, image_shape: tuple[int, int, int], levels: int, dataset: str) -> Tensor:
    """The images as uint8 (N, C, H, W), after checking them against the dataset's shape and levels."""
    images, where = samples.images, samples.source["path"]
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise UserError(
            f"{where}: images are {tuple(images.shape[1:])} (C, H, W), but {dataset} images are "
            f"{tuple(image_shape)}"
        )
    low, high = int(images.min()), int(images.max())
    if low < 0 or high > levels - 1:
        raise UserError(
            f"{where}: pixel values range {low}..{high}, but {dataset} pixels are integers 0..{levels - 1}"
            + (f"; {TO_UINT8}" if levels == 256 else "")
        )
    return images.to(torch.uint8)


def output_format(path: Path, n: int) -> str:
    """ "npz" or "png" for ``bench sample --out``; checked before any sample is drawn."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".png":
        if n > PNG_GRID_MAX:
            raise SampleFileUsageError(
                f"a PNG grid holds at most {PNG_GRID_MAX} samples, got -n {n}: write a .npz instead"
            )
        return "png"
    raise SampleFileUsageError(
        f"--out {path}: write a .npz (uint8 images) or a .png grid (up to {PNG_GRID_MAX})"
    )


def write_samples(path: Path, images: Tensor, levels: int) -> None:
    """uint8 (N, C, H, W) -> a .npz holding "images" (readable by read_samples) or a PNG grid; atomic."""
    if output_format(path, len(images)) == "png":
        save_image_grid(path, images, nrow=max(1, round(len(images) ** 0.5)), levels=levels)
        return
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{NPZ_KEY: images.cpu().numpy()})
    write_bytes(path, buffer.getvalue())

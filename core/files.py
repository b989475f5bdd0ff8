"""Files that appear whole or not at all: the suite's one atomic writer, its JSON reader and
writer, its SHA-256, and its PNG grid writer. Used by runs, metrics, floors, caches and reports."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pickle
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import UserError


def check_output_file(path: Path, option: str = "output") -> None:
    """Refuse to write ``path`` when something that is not a regular file is there (a device node, a
    FIFO, a folder): replacing it would destroy what is not ours, or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{option} {path}: {exc.strerror or exc}; name a new file") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{option} {path} exists and is not a regular file; name a new file")


def write_bytes(path: Path, payload: bytes) -> None:
    """Write through a temporary file in the same folder, then os.replace: a crash never leaves a
    half-written file under the final name. os.open with 0o666 keeps the umask's permissions
    (mkstemp would make every result file private). Only a regular file is ever replaced."""
    path = Path(path)
    check_output_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        hint = _space_hint(exc) or "; pass --out to a writable folder"
        raise UserError(f"cannot write to {path.parent} ({exc.strerror or exc}){hint}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a quota, an I/O error: one line, the old file intact
            raise UserError(f"cannot write {path} ({exc.strerror or exc}){_space_hint(exc)}") from None
        raise


def _space_hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; free some disk space (or pass --out on another disk) and run the command again"
    return ""


def overwrite_in_place(path: Path, payload: bytes) -> None:
    """Rewrite a small existing file in its own blocks, where the atomic writer cannot (a full disk
    has no room for its temporary file): the old bytes are overwritten, and a shorter payload is
    padded with spaces rather than truncated, so no block is freed and taken again. For a run's
    status on the way out of an error (JSON allows trailing spaces); raises OSError if it fails."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        size = os.fstat(fd).st_size
        os.write(fd, payload + b" " * max(0, size - len(payload)))
        os.fsync(fd)
    finally:
        os.close(fd)


def open_regular(path: Path) -> io.BufferedReader:
    """``open(path, "rb")`` of a regular file; a FIFO, device or folder is a UserError, not a read that
    waits for a writer forever or never ends (O_NONBLOCK lets the open of a FIFO return)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; name a file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(obj: Any) -> Any:
    if callable(getattr(obj, "json_value", None)):  # a value written as the text that parses back to it
        return _jsonable(obj.json_value())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; a non-finite number is recorded as missing
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def to_8bit(images: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Pixels 0..levels-1 (uint8) -> 0..255 for display and for 8-bit feature networks."""
    if levels == 256:
        return images
    return (images.to(torch.int32) * 255 // (levels - 1)).to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int = 8, levels: int = 256, pad: int = 2) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels 0..levels-1 -> one uint8 grid (H', W') for grey, (H', W', 3) for
    colour; the suite's one grid, through torchvision's make_grid."""
    from torchvision.utils import make_grid

    grid = make_grid(to_8bit(images.cpu(), levels), nrow=nrow, padding=pad, pad_value=128)  # (3, H', W')
    return grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)


def save_image_grid(path: Path, images: torch.Tensor, nrow: int = 8, levels: int = 256) -> None:
    """uint8 (N, C, H, W) pixels 0..levels-1 -> PNG grid."""
    from PIL import Image

    pixels = image_grid(images, nrow, levels)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def read_json(path: Path, fix: str = "fix or delete it") -> Any:
    """Parse a JSON file; any way it can be unreadable is one UserError naming the file and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}): {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON (not UTF-8 text): {fix}") from None
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}): {fix}") from None


class _PlainUnpickler(pickle.Unpickler):
    """Builtin containers, numbers and strings only: a pickle that names any class or function (the
    way a pickle runs code) is refused, never called."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused {module}.{name}")


def read_plain_pickle(path: Path) -> Any:
    """A pickle someone else wrote (submitit's result files), read as data; None when it is not a
    regular file, cannot be read, or names anything but builtin values."""
    try:
        with open_regular(path) as f:
            return _PlainUnpickler(f).load()
    except (UserError, OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError, RecursionError):
        return None

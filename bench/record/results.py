"""Run folders: their names, creation and removal, status, the lock that keeps two processes out of
one folder, and provenance. Files are written through ``genbench.core.files`` (atomic: each appears
whole or not at all)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genbench.core.errors import UserError
from genbench.core.files import overwrite_in_place, read_json, write_json

CHECKPOINT = Path("checkpoints") / "last.pt"  # a run folder's checkpoint
STATUSES = ("running", "interrupted", "failed", "done")
LOCK = "run.lock"
# One path component: no separators, no "..", no leading dot or dash (hidden files, option lookalikes).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 64  # the run id adds model, profile and seed; file systems allow 255 bytes a component
# Seeds reach numpy's RandomState (torch-fidelity's KID subsets and IS shuffle), which takes < 2**32.
SEED_LIMIT = 2**32


class RunInUse(UserError):
    """Another live process holds the run folder's lock."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def check_run_name(name: str) -> str:
    """``name`` if it can be one path component of a run id; ValueError saying why not."""
    if not name:
        raise ValueError("a run name cannot be empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"a run name has at most {NAME_MAX} characters, got {len(name)}")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a run name: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (no '/', no '..')"
        )
    return name


def make_run_id(
    model: str,
    profile: str,
    seed: int,
    name: str | None = None,
    dataset: str | None = None,
    tag: str = "",
) -> str:
    """``<model>[-<dataset>]-<profile>-s<seed>[-<tag>]-<name or time>``: ``dataset`` is what the run id
    says of the dataset (``DatasetSpec.id_part``: nothing for the default one), so one name on two
    datasets makes two runs; ``tag`` names the run's --set overrides (bench.planning.overrides.tag),
    so one name with two settings makes two runs too."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    what = model if dataset is None else f"{model}-{dataset}"
    what = f"{what}-{profile}-s{seed}" + (f"-{tag}" if tag else "")
    return f"{what}-{stamp if name is None else check_run_name(name)}"


def check_writable_folder(path: Path, option: str) -> None:
    """Refuse, before anything is written, a folder that cannot be created or written: the nearest
    existing ancestor must be a folder that takes a new entry (probed with a temporary folder,
    since permission bits say nothing to root or about /proc)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, not a folder; pass a writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".genbench-probe-", dir=existing))
    except OSError as exc:
        raise UserError(
            f"{option} {path} cannot be created or written ({exc.strerror or exc}); pass a writable folder"
        ) from None


def create_run_dir(out: Path, run_id: str, overwrite: bool = False) -> Path:
    """A new, empty run folder ``out/run_id``. An existing one is an error unless ``overwrite``, which
    removes that one run folder and nothing else."""
    if Path(run_id).name != run_id or run_id in (".", ".."):
        raise ValueError(f"a run id is one path component, got {run_id!r}")
    run_dir = Path(out) / run_id
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        if os.path.lexists(run_dir):
            if not overwrite:
                raise UserError(f"run folder {run_dir} exists; pick another --name, or pass --overwrite")
            _remove_run_dir(Path(out), run_dir)
        run_dir.mkdir()
        (run_dir / "checkpoints").mkdir()
    except OSError as exc:
        raise UserError(
            f"cannot create a run folder under {out} ({exc.strerror or exc}); pass --out to a writable folder"
        ) from None
    return run_dir


def _remove_run_dir(out: Path, run_dir: Path) -> None:
    """Remove the one run folder --overwrite names, after checking it is one: a real folder directly
    inside --out (both resolved), holding a config.json (or nothing), and not in use."""
    refuse = f"--overwrite refuses to remove {run_dir}"
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise UserError(f"{refuse}: it is not a folder (a link or a file); remove it yourself")
    if run_dir.resolve().parent != out.resolve():
        raise UserError(f"{refuse}: it does not lie inside {out}")
    if not (run_dir / "config.json").is_file() and any(run_dir.iterdir()):
        raise UserError(f"{refuse}: it is not a run folder (no config.json); remove it yourself")
    check_not_in_use(run_dir)
    shutil.rmtree(run_dir)


def set_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """Write status.json atomically; where that fails (a full disk has no room for the temporary
    file), overwrite the existing one in place, so that a run never stays "running" after it ended."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    path = Path(run_dir) / "status.json"
    doc = {"status": status, "reason": reason, "updated": now_iso()}
    try:
        write_json(path, doc)
    except UserError as exc:
        try:
            overwrite_in_place(path, (json.dumps(doc, indent=2) + "\n").encode())
        except OSError:
            raise exc from None


def read_status(run_dir: Path) -> str | None:
    """The run's status, or None when status.json is missing or unreadable."""
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except UserError:
        return None
    return doc.get("status") if isinstance(doc, dict) else None


# ---------------------------------------------------------------------------------------------------------
# The lock: one process per run folder


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}


def _lock_holder(path: Path) -> dict[str, Any] | None:
    """The lock's owner, or None when there is no lock. A lock that is not ours to read is foreign."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "since": None}
    return holder if isinstance(holder, dict) else {"pid": None, "host": None, "since": None}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's owner may still run: any process on another host (we cannot ask) or one
    whose pid exists here. Only a dead pid on this host makes a lock stale."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _in_use(run_dir: Path, holder: dict[str, Any]) -> str:
    fix = f"wait for it to end, or if that process is gone, delete {run_dir / LOCK}"
    if not isinstance(holder.get("pid"), int) or not isinstance(holder.get("host"), str):
        return f"run in use: {run_dir / LOCK} names no process genbench can check (unreadable); {fix}"
    return (
        f"run in use: {run_dir} is held by pid {holder['pid']} on {holder['host']} since "
        f"{holder.get('since')}; {fix}"
    )


def _create_exclusive(path: Path, owner: dict[str, Any]) -> None:
    """Create ``path`` holding ``owner`` whole, or raise FileExistsError: written to a temporary
    file, then hard-linked into place (a link never replaces an existing file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(owner) + "\n")
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink()


def check_not_in_use(run_dir: Path) -> None:
    """RunInUse when a live process holds the run folder's lock."""
    holder = _lock_holder(Path(run_dir) / LOCK)
    if holder is not None and _alive(holder):
        raise RunInUse(_in_use(Path(run_dir), holder))


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` (pid, host, start time) for as long as the block runs. A lock held by a
    live process is a RunInUse error; a stale one (its pid dead on this host) is taken over with a
    notice on stderr."""
    path = Path(run_dir) / LOCK
    owner = _owner()
    for _ in range(3):  # a stale lock removed by two processes at once: one of them wins the next round
        try:
            _create_exclusive(path, owner)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None:
                continue  # released between our attempt and our look
            if _alive(holder):
                raise RunInUse(_in_use(Path(run_dir), holder)) from None
            print(
                f"note: taking over the stale lock of {run_dir} (pid {holder['pid']} on {holder['host']} "
                "is gone)",
                file=sys.stderr,
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError as exc:
            raise UserError(
                f"cannot lock {run_dir} ({exc.strerror or exc}); is the folder writable?"
            ) from None
    else:
        raise RunInUse(_in_use(Path(run_dir), _lock_holder(path) or {}))
    try:
        yield
    finally:
        if _lock_holder(path) == owner:
            with contextlib.suppress(OSError):
                path.unlink()


# ---------------------------------------------------------------------------------------------------------
# Provenance


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "torch-fidelity", "genbench"):
        try:
            found[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package.replace("-", "_")] = None
    return found

"""Run folders: their ids, creation, status and provenance. Files are written through
``genbench.core.files`` (atomic: each appears whole or not at all)."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

from genbench.core.errors import UserError
from genbench.core.files import write_json

STATUSES = ("running", "interrupted", "failed", "done")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def make_run_id(model: str, profile: str, seed: int, name: str | None = None) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{profile}-s{seed}-{name or stamp}"


def create_run_dir(out: Path, run_id: str, overwrite: bool = False) -> Path:
    """A new, empty run folder. An existing one is an error unless ``overwrite``."""
    run_dir = Path(out) / run_id
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        if run_dir.exists():
            if not overwrite:
                raise UserError(f"run folder {run_dir} exists; pick another --name, or pass --overwrite")
            import shutil

            shutil.rmtree(run_dir)
        run_dir.mkdir()
        (run_dir / "checkpoints").mkdir()
    except OSError as exc:
        raise UserError(
            f"cannot create a run folder under {out} ({exc.strerror or exc}); pass --out to a writable folder"
        ) from None
    return run_dir


def set_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    write_json(Path(run_dir) / "status.json", {"status": status, "reason": reason, "updated": now_iso()})


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

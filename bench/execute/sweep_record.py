"""A sweep's record and its status: RESULTS/.sweep/<sweep>/sweep.json (each run of the grid and its
jobs, written by `bench sweep`) and `bench sweep --status`, which reads it with each run's
status.json and submitit's view of its last job."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import submitit
from submitit.core.utils import JobPaths

from genbench.bench.record import results
from genbench.core import files
from genbench.core.errors import UserError

if TYPE_CHECKING:
    from genbench.bench.execute.sweep import Cell

SWEEP_DIR = ".sweep"
LAUNCHERS = ("auto", "local", "slurm")


def sweep_dir(out: Path, sweep: str) -> Path:
    return Path(out) / SWEEP_DIR / sweep


@dataclasses.dataclass
class SweepRecord:
    """RESULTS/.sweep/<sweep>/sweep.json: the runs of the sweep and each one's jobs."""

    folder: Path
    sweep: str
    out: Path
    runs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, folder: Path, sweep: str, out: Path) -> SweepRecord:
        path = folder / "sweep.json"
        doc = files.read_json(path) if path.is_file() else {}
        if not isinstance(doc, dict) or not isinstance(doc.get("runs", {}), dict):
            raise UserError(f"{path} is not a sweep record; delete it (the run folders stay)")
        return cls(folder, sweep, out, doc.get("runs", {}))

    def add_grid(self, cells: list[Cell], actions: dict[str, str]) -> None:
        for cell in cells:
            entry = self.runs.setdefault(cell.run_id, {"jobs": []})
            entry |= {
                "model": cell.model,
                "profile": cell.profile,
                "seed": cell.seed,
                "dataset": cell.dataset,
                "set": list(cell.sets),
            }
            entry["last_action"] = actions[cell.run_id]

    def add_job(self, run_id: str, job_id: str, launcher: str, action: str) -> None:
        self.runs[run_id]["jobs"].append(
            {"job_id": job_id, "launcher": launcher, "host": socket.gethostname(), "action": action,
             "submitted": results.now_iso()}
        )  # fmt: skip

    def last_job(self, run_id: str) -> str | None:
        jobs = self.runs.get(run_id, {}).get("jobs") or []
        return jobs[-1]["job_id"] if jobs else None

    def save(self) -> None:
        files.write_json(
            self.folder / "sweep.json",
            {"sweep": self.sweep, "out": str(self.out), "updated": results.now_iso(), "runs": self.runs},
        )


JOB_ID = re.compile(r"\d{1,20}(_\d{1,10})?")  # a Slurm job (array task) id, or a local job's pid


def job_id(folder: Path, job: Any) -> str:
    """A job's id from sweep.json, read as data: digits (and one array index), nothing that could
    name a path outside the sweep's jobs folder."""
    ident = job.get("job_id") if isinstance(job, dict) else None
    if not (isinstance(ident, str) and JOB_ID.fullmatch(ident)) or job.get("launcher") not in LAUNCHERS:
        raise UserError(
            f"{folder / 'sweep.json'} holds a job that is not a Slurm or local job id ({ident!r}); "
            "delete that file (the run folders stay) and submit the sweep again"
        )
    return ident


def job_state(folder: Path, job: dict[str, Any]) -> str:
    """submitit's view of a job: Slurm's state (sacct), or for a local job whether it left a result,
    still runs, or is gone."""
    ident = job_id(folder, job)
    if job["launcher"] == "slurm":
        return submitit.SlurmJob(folder / "jobs", ident).state
    paths = JobPaths(folder / "jobs", ident)
    if paths.result_pickle.exists():
        # (outcome, RunJob's dict of strings or a traceback's text), read without running code
        doc = files.read_plain_pickle(paths.result_pickle)
        ok = isinstance(doc, tuple) and len(doc) == 2 and doc[0] in ("success", "error")
        return {"success": "COMPLETED", "error": "FAILED"}[doc[0]] if ok else "UNREADABLE RESULT"
    if job.get("host") != socket.gethostname():
        return "UNKNOWN"
    try:
        os.kill(int(ident), 0)
    except ProcessLookupError:
        return "GONE"
    except PermissionError:
        pass
    return "RUNNING"


def status(out: Path, sweep: str | None = None) -> pd.DataFrame:
    """One row per run of the sweep (every sweep under OUT when None): its status.json, its last job
    and submitit's state of that job."""
    root = Path(out) / SWEEP_DIR
    folders = [root / sweep] if sweep else sorted(p for p in root.glob("*") if (p / "sweep.json").is_file())
    if not folders or not (folders[0] / "sweep.json").is_file():
        what = f"sweep {sweep!r}" if sweep else "sweep"
        raise UserError(f"no {what} under {root}; start one with: bench sweep --models ... --out {out}")
    rows = []
    for folder in folders:
        record = SweepRecord.load(folder, folder.name, Path(out))
        for run_id, entry in record.runs.items():
            run_dir = Path(out) / run_id
            doc = files.read_json(run_dir / "status.json") if (run_dir / "status.json").is_file() else {}
            jobs = entry.get("jobs") or []
            rows.append(
                {
                    "sweep": folder.name,
                    "run": run_id,
                    "status": doc.get("status", "missing"),
                    "job": job_id(folder, jobs[-1]) if jobs else "-",
                    "job state": job_state(folder, jobs[-1]) if jobs else "-",
                    "reason": doc.get("reason") or "",
                }
            )
    return pd.DataFrame(rows, columns=["sweep", "run", "status", "job", "job state", "reason"])

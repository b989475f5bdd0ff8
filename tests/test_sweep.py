"""`bench sweep`: the grid, what a re-submission does with each run folder, the Slurm array it submits
(through a stand-in sbatch), a job stopped by its time-limit warning, and the whole path on the local
executor, killed midway and submitted again."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_utils import invoke, one_line_error
from reliability_utils import preload, subprocess_env
from submitit.core.utils import pickle_load

from genbench.bench.engine import train as trainer_module
from genbench.bench.engine.train import RunOptions, TrainingInterrupted
from genbench.bench.execute import run as runs
from genbench.bench.execute import sweep, sweep_record
from genbench.bench.planning import plan as plans
from genbench.bench.planning.settings import RunSettings
from genbench.bench.record import results
from genbench.core.errors import UsageError, UserError

STOP_TIMEOUT_S = 120  # a killed local sweep waits for its runs to checkpoint
FAST = RunSettings(threads=1, n_samples=130)  # the fewest samples FID (mnist) takes


def request(out: Path, **changes) -> sweep.SweepRequest:
    fields = dict(models=("vae", "gan"), seeds=(0, 1), profiles=("smoke",), out=out, settings=FAST)
    return sweep.SweepRequest(**{**fields, **changes})


def started_run(out: Path, cell: sweep.Cell, status: str | None, **train_overrides) -> Path:
    """A run folder as `bench run` leaves it before training (config.json), with ``status``."""
    plan = plans.plan(
        cell.model, cell.profile, cell.seed, train_overrides, {"n_samples": 130}, dataset=cell.dataset
    )
    run_dir = runs.start(plan, RunOptions(torch.device("cpu")), out, cell.name)
    if status is not None:
        results.set_status(run_dir, status)
    return run_dir


def test_grid_names_each_run_once_and_for_good(tmp_path):
    cells = sweep.grid(request(tmp_path, datasets=("mnist", "fashion-mnist"), sweep="s1"))
    ids = [c.run_id for c in cells]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2
    assert "gan-fashion-mnist-smoke-s1-s1-fashion-mnist" in ids and "vae-smoke-s0-s1-mnist" in ids
    assert ids == [
        c.run_id for c in sweep.grid(request(tmp_path, datasets=("mnist", "fashion-mnist"), sweep="s1"))
    ]


def test_decide_reads_each_run_folder(tmp_path):
    cell = sweep.Cell("gan", "smoke", 0, "mnist", "sweep")
    assert sweep.decide(tmp_path / cell.run_id) == "start"
    run_dir = started_run(tmp_path, cell, "done")
    assert sweep.decide(run_dir) == "skip"
    for status in ("interrupted", "failed", "running"):  # running, but no process holds it: resume
        results.set_status(run_dir, status)
        assert sweep.decide(run_dir) == "resume"
    with results.run_lock(run_dir):  # this live process holds it
        assert sweep.decide(run_dir) == "busy"
    (run_dir / results.LOCK).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))
    assert sweep.decide(run_dir) == "resume"  # a stale lock: its pid is gone


def test_dry_run_plans_without_submitting(tmp_path):
    out = tmp_path / "results"
    done = started_run(out, sweep.Cell("vae", "smoke", 1, "mnist", "sweep"), "done")
    started_run(out, sweep.Cell("gan", "smoke", 0, "mnist", "sweep"), "interrupted")
    table = sweep.submit(request(out, launcher="local", dry_run=True), echo=lambda *a, **k: None)
    assert dict(zip(table["run"], table["action"], strict=True)) == {
        "vae-smoke-s0-sweep-mnist": "start",
        "vae-smoke-s1-sweep-mnist": "skip",
        "gan-smoke-s0-sweep-mnist": "resume",
        "gan-smoke-s1-sweep-mnist": "start",
    }
    assert not (out / sweep_record.SWEEP_DIR).exists() and sorted(p.name for p in out.iterdir()) == sorted(
        [done.name, "gan-smoke-s0-sweep-mnist"]
    )


def test_a_run_made_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "results"
    started_run(out, sweep.Cell("gan", "smoke", 0, "mnist", "sweep"), "interrupted", max_steps=7)
    with pytest.raises(UserError, match=r"train_config\.max_steps 7 -> 30.*another --name"):
        sweep.submit(request(out, launcher="local", dry_run=True), echo=lambda *a, **k: None)
    # The same settings: no complaint.
    sweep.submit(
        request(out, launcher="local", dry_run=True, settings=dataclasses.replace(FAST, max_steps=7)),
        echo=lambda *a, **k: None,
    )


def test_bad_requests_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "results"
    error = one_line_error(
        invoke("sweep", "--models", "gan", "--profiles", "smoke", "--out", out, "--n-samples", "5"), 2
    )
    assert "--n-samples 5" in error
    assert "--models is required" in one_line_error(invoke("sweep", "--out", out), 2)
    assert "--profiles" in one_line_error(invoke("sweep", "--models", "gan", "--profiles", "smoke,huge"), 2)
    error = one_line_error(invoke("sweep", "--models", "gan", "--sweep", "x" * 60, "--out", out), 2)
    assert "at most 64 characters" in error
    error = one_line_error(invoke("sweep", "--models", "gan", "--launcher", "local", "--partition", "gpu"), 2)
    assert "--partition is a Slurm option" in error
    assert "no sweep under" in one_line_error(invoke("sweep", "--status", "--out", out), 1)
    assert not out.exists()


def fake_sbatch(folder: Path, job_id: int) -> Path:
    """An sbatch that keeps the script it is given and answers as Slurm does (and an srun, by which
    submitit knows it is on Slurm)."""
    folder.mkdir()
    scripts = {
        "sbatch": f'#!/bin/sh\ncp "$1" {folder}/submitted.sh\necho "Submitted batch job {job_id}"\n',
        "srun": "#!/bin/sh\nexit 1\n",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def test_slurm_gets_one_array_with_the_options(tmp_path, monkeypatch, caplog):
    bin_dir = fake_sbatch(tmp_path / "bin", 4242)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "results"
    started_run(out, sweep.Cell("vae", "smoke", 1, "mnist", "sweep"), "done")
    with caplog.at_level(logging.INFO, logger="genbench"):  # its info lines are logging's
        table = sweep.submit(
            request(out, launcher="auto", max_parallel=2, partition="gpu", time_min=30, gpus_per_job=1,
                    cpus_per_job=4, mem_gb=16),
            echo=lambda *a, **k: None,
        )  # fmt: skip
    script = (bin_dir / "submitted.sh").read_text()
    for line in ("--array=0-2%2", "--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=4",
                 "--mem=16GB", "--job-name=genbench-sweep"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, script
    assert list(table["job"]) == ["4242_0", "-", "4242_1", "4242_2"]  # the done run is not submitted
    jobs_dir = out / sweep_record.SWEEP_DIR / "sweep" / "jobs"
    pickled = {
        job: pickle_load(jobs_dir / f"{job}_submitted.pkl").function for job in ("4242_0", "4242_1", "4242_2")
    }
    assert {job: p.cell.run_id for job, p in pickled.items()} == {
        "4242_0": "vae-smoke-s0-sweep-mnist",
        "4242_1": "gan-smoke-s0-sweep-mnist",
        "4242_2": "gan-smoke-s1-sweep-mnist",
    }
    job = pickled["4242_0"]
    assert job.request.out.is_absolute() and job.request.settings.data_dir.is_absolute()
    assert job.request.settings.overrides("eval_config") == {"n_samples": 130}
    assert any("bench sweep --status" in m for m in caplog.messages)
    shown = sweep_record.status(out)
    assert list(shown["job"]) == ["4242_0", "-", "4242_1", "4242_2"]
    assert list(shown["status"]) == ["missing", "done", "missing", "missing"]


def test_slurm_without_sbatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError, match="srun is not on PATH"):
        sweep.resolve_launcher("slurm")
    assert sweep.resolve_launcher("auto") == "local"


@pytest.mark.slow
def test_time_limit_warning_checkpoints_then_requeues_and_the_job_resumes(tmp_path, mnist_dir, monkeypatch):
    """submitit's SIGUSR2 mid-training: the step ends, a checkpoint is written, the run is left
    interrupted and submitit's own handler (requeue) runs; the requeued job resumes the run."""
    preload(mnist_dir, monkeypatch)
    out = tmp_path / "results"
    cell = sweep.Cell("gan", "smoke", 0, "mnist", "sweep")
    settings = dataclasses.replace(FAST, device="cpu", precision="fp32", data_dir=mnist_dir)
    job = sweep.RunJob(cell, sweep.SweepRequest(models=("gan",), out=out, settings=settings))
    step = trainer_module.Trainer._step

    def warned_at_step_3(self, x):
        step(self, x)
        if self.state.step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(trainer_module.Trainer, "_step", warned_at_step_3)
    requeued = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: requeued.append(signum))
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM"):
            job()
        assert requeued == [signal.SIGUSR2]
        run_dir = out / cell.run_id
        assert results.read_status(run_dir) == "interrupted"
        assert torch.load(run_dir / results.CHECKPOINT, weights_only=False)["state"]["step"] == 3
        monkeypatch.setattr(trainer_module.Trainer, "_step", step)
        with results.run_lock(run_dir), pytest.raises(results.RunInUse):  # another live process holds it
            job()
        decide = sweep.decide
        monkeypatch.setattr(sweep, "decide", lambda run_dir: "busy")  # held when looked at, released since
        assert job() == {"run_id": cell.run_id, "action": "resume"}
        monkeypatch.setattr(sweep, "decide", decide)
        assert results.read_status(run_dir) == "done"
        assert job() == {"run_id": cell.run_id, "action": "skip"}
        assert signal.getsignal(signal.SIGUSR2) is not previous  # the test's handler is back
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _wait(predicate, proc, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_local_sweep_killed_midway_finishes_on_resubmission(tmp_path, mnist_dir):
    out = tmp_path / "results"
    args = [sys.executable, "-m", "genbench.bench.commands.cli", "sweep", "--models", "vae,gan",
            "--seeds", "0,1", "--profiles", "smoke", "--launcher", "local", "--max-parallel", "2",
            "--out", str(out),
            "--data-dir", str(mnist_dir), "--n-samples", "130", "--threads", "1"]  # fmt: skip
    ids = [f"{m}-smoke-s{s}-sweep-mnist" for m in ("vae", "gan") for s in (0, 1)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=subprocess_env(), text=True
    )
    # Kill the sweep (SIGTERM, as a scheduler or `kill` does) once a run is done and another under way.
    statuses = lambda: [results.read_status(out / run_id) for run_id in ids]  # noqa: E731
    _wait(lambda: "done" in statuses() and "running" in statuses(), proc, "a finished and a running run")
    proc.send_signal(signal.SIGTERM)
    first_output, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
    assert proc.returncode == 130, first_output
    assert "submit the same command again" in first_output
    before = {run_id: sweep.decide(out / run_id) for run_id in ids}
    assert {"skip", "resume"} <= set(before.values()), (before, first_output)
    assert all(
        results.read_status(out / i) == "interrupted" for i, action in before.items() if action == "resume"
    )
    finished = {p: p.stat().st_mtime_ns for i in ids if before[i] == "skip" for p in (out / i).rglob("*")}

    again = subprocess.run(args, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = [line.split() for line in again.stdout.splitlines()]
    assert {row[0]: row[1] for row in rows if row and row[0] in ids} == before  # done runs: "skip"
    assert all(results.read_status(out / run_id) == "done" for run_id in ids)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # metrics.json, history.csv... untouched

    status = invoke("sweep", "--status", "--out", out)
    assert status.exit_code == 0, status.output
    rows = [line.split() for line in status.output.splitlines()[1:]]
    assert {row[1]: (row[2], row[4]) for row in rows} == {run_id: ("done", "COMPLETED") for run_id in ids}
    report = invoke("report", "--results", out, "--no-figures", "--format", "md,csv")
    assert report.exit_code == 0, report.output
    assert set(pd.read_csv(out / "report" / "runs.csv")["run_id"]) == set(ids)

"""Round three of the hostile sweep, the remainder: what the machine cannot give (cores, memory, disk
space), what a run folder may hold that is not its own (another dataset's checkpoint, a config.json
edited by hand), and the small things a user sees (thread counts, progress in logs, the shipped
weights). Each test checks what the user sees: the exit code, the one line, and the folder left
as it was or ended in a final status."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_utils import invoke, one_line_error
from reliability_utils import FAST, preload, status

from genbench import models
from genbench.bench.commands import sampling
from genbench.bench.engine import distributed
from genbench.bench.engine.checkpoint import CHECKPOINT_FORMAT
from genbench.bench.engine.threads import usable_cores
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run
from genbench.bench.planning import plan
from genbench.bench.record import results
from genbench.core import files, log
from genbench.core.errors import UserError
from genbench.metrics import likelihood
from genbench.metrics.features import MNIST

CPU = RunOptions(device=torch.device("cpu"))


def untrained_run(out: Path, dataset: str = "mnist", checkpoint_dataset: str | None = None) -> Path:
    """A run folder of the smoke GAN as `bench run` starts it, with a checkpoint of its untrained
    weights that says it was trained on ``checkpoint_dataset`` (default: the run's dataset)."""
    the_plan = plan.plan("gan", "smoke", 0, dataset=dataset)
    run_dir = run.start(the_plan, CPU, out, name="u")
    identity = {**the_plan.identity(), "dataset": checkpoint_dataset or dataset}
    model = models.get_model_class("gan")(the_plan.model_config)
    files.save_torch(
        run_dir / results.CHECKPOINT,
        {"format": CHECKPOINT_FORMAT, "identity": identity, "model": model.state_dict(), "ema": None,
         "state": {"step": 0, "finished": True}},
    )  # fmt: skip
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- --nproc: cores and memory up front; workers die with the launcher --------------------------------------
def test_nproc_beyond_the_cores_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "out"
    args = ("run", "--models", "gan", "--profile", "smoke", "--device", "cpu", "--out", out)
    too_many = os.cpu_count() * 8
    line = one_line_error(invoke(*args, "--nproc", too_many), 2)
    assert f"--nproc {too_many} on" in line and "usable CPU core" in line, line
    assert not out.exists()


def test_nproc_beyond_the_available_memory_is_refused_before_anything_starts(tmp_path, monkeypatch):
    from genbench.bench.engine import timing

    monkeypatch.setattr(timing, "available_memory_bytes", lambda: 2**20)  # 1 MiB left
    out = tmp_path / "out"
    args = ("run", "--models", "gan", "--profile", "smoke", "--device", "cpu", "--out", out, "--nproc", 2)
    line = one_line_error(invoke(*args), 2)
    assert "2 workers need at least" in line and "GiB is available; use --nproc 1" in line, line
    assert not out.exists()


WORKER = """
import os, sys, time
os.environ["{env}"] = sys.argv[1]
from genbench.bench.engine.distributed import die_with_parent
die_with_parent()
print("armed", flush=True)
time.sleep(120)
"""
LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid())],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_worker_dies_with_its_launcher_even_on_sigkill():
    """What `bench run-worker` arms first: a SIGKILLed launcher takes its workers with it, so none trains
    on (holding memory) and marks the run done for a launcher that is gone."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER.format(env=distributed.ENV_PARENT)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    worker = int(launcher.stdout.readline())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "Z" not in _state(worker):
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_the_worker_command_arms_the_parent_death_signal_first(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "die_with_parent", lambda: calls.append("armed"))
    monkeypatch.delenv(distributed.ENV_REQUEST, raising=False)
    line = one_line_error(invoke("run-worker"), 2)
    assert calls == ["armed"] and "started by `bench run --nproc N`" in line


# --- a full disk: at start one line and no folder; during evaluation a final status ------------------------
@pytest.fixture
def disk_full(monkeypatch):
    """``full["now"] = True`` makes every new file of the atomic writer fail with ENOSPC, as a full
    disk does; rewriting an existing file in its own blocks still works, as it does there."""
    full = {"now": False}
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if full["now"] and flags & os.O_EXCL and str(path).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    return full


def test_a_full_disk_at_start_is_one_line_and_leaves_no_folder(tmp_path, mnist_dir, monkeypatch, disk_full):
    preload(mnist_dir, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    disk_full["now"] = True
    line = one_line_error(invoke("run", *FAST, "--out", out, "--name", "full", "--no-progress"), 1)
    assert "No space left on device" in line and "free some disk space" in line, line
    assert list(out.iterdir()) == []  # no run folder that is not a run


def test_a_full_disk_during_evaluation_ends_the_run_failed(tmp_path, mnist_dir, monkeypatch, disk_full):
    preload(mnist_dir, monkeypatch)
    evaluate = run.evaluate

    def evaluate_on_a_full_disk(*args, **kwargs):
        disk_full["now"] = True  # training wrote its checkpoints; the disk fills now
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run, "evaluate", evaluate_on_a_full_disk)
    line = one_line_error(invoke("run", *FAST, "--out", tmp_path, "--name", "full", "--no-progress"), 1)
    assert "No space left on device" in line, line
    run_dir = tmp_path / "gan-smoke-s0-full"
    state = status(run_dir)  # rewritten in place: there was no room for a new file
    assert state["status"] == "failed" and "No space left on device" in state["reason"], state
    assert not (run_dir / "metrics.json").exists() and not (run_dir / results.LOCK).exists()
    assert not list(run_dir.rglob("*.tmp"))


def test_a_write_that_fills_the_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """The common way a disk fills: the temporary file is created, its bytes do not fit."""
    target = tmp_path / "metrics.json"
    files.write_json(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        UserError, match=r"cannot write .*metrics.json \(No space left on device\); free some"
    ):
        files.write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"
    ]


def test_status_is_rewritten_in_place_when_no_new_file_fits(tmp_path, disk_full):
    results.set_status(tmp_path, "running", "evaluating; training is complete and checkpointed")
    disk_full["now"] = True
    results.set_status(tmp_path, "failed", "x")
    assert results.read_status(tmp_path) == "failed" and status(tmp_path)["reason"] == "x"


# --- a likelihood worse than a uniform coder's after training ----------------------------------------------
def _bpd(value: float, stderr: float | None = None) -> dict:
    return {"bpd": {"value": value, "stderr": stderr, "label": "Bits/dim"}}


@pytest.mark.parametrize("levels", [256, 2])
def test_a_likelihood_worse_than_a_uniform_coder_after_training_is_a_failure(levels):
    model = models.build("pixelcnn", "smoke", levels=levels)[0]
    uniform = math.log2(levels)  # 8 bits/dim for 256 levels, 1 binarized
    limit = likelihood.UNIFORM_FACTOR * uniform  # 12 and 1.5 bits/dim
    likelihood.check_trained(_bpd(uniform + 0.5 * uniform), model)  # worse than uniform, not by half again
    likelihood.check_trained(_bpd(limit + 0.03, stderr=0.01), model)  # within three standard errors
    likelihood.check_trained({"bpd": {"value": None}}, model)  # not computed: nothing to check
    worse = f"worse than a uniform coder's {uniform:g} bits/dim"
    with pytest.raises(likelihood.ImpossibleLikelihood, match=worse):
        likelihood.check_trained(_bpd(limit + 0.031, stderr=0.01), model)


# --- what a run folder holds that is not its own ------------------------------------------------------------
def test_a_checkpoint_of_another_dataset_is_refused_not_scored(tmp_path):
    ours = untrained_run(tmp_path / "a")
    result = invoke("sample", ours, "-n", 4, "--out", tmp_path / "ok.npz", "--no-progress")
    assert result.exit_code == 0, result.output
    foreign = untrained_run(tmp_path / "b", checkpoint_dataset="fashion-mnist")
    line = one_line_error(invoke("sample", foreign, "-n", 4, "--out", tmp_path / "x.npz"), 1)
    assert "is of dataset 'fashion-mnist'" in line and "config.json says 'mnist'" in line, line
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("run_id", "../../x", "run_id '../../x' is not a run id"), ("precision", "fp16", "precision 'fp16'")],
)
def test_a_resumed_config_is_validated_as_the_command_line_is(tmp_path, key, value, needle):
    run_dir = untrained_run(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, key: value}))
    before = snapshot(tmp_path)
    line = one_line_error(invoke("run", "--resume", run_dir, "--no-progress"), 1)
    assert needle in line and "is not a genbench run config" in line, line
    assert snapshot(tmp_path) == before


# --- limits on what one command may ask for -----------------------------------------------------------------
def test_threads_far_beyond_the_cores_are_refused():
    line = one_line_error(invoke("run", "--models", "vae", "--threads", 1000, "--dry-run"), 2)
    assert "1000 threads on" in line and "oversubscribe" in line, line


def test_a_billion_samples_are_refused_up_front(tmp_path):
    run_dir = untrained_run(tmp_path)
    line = one_line_error(invoke("sample", run_dir, "-n", 10**9, "--out", tmp_path / "x.npz"), 2)
    assert "1000000000 is not in the range 1<=x<=1000000" in line, line
    assert not (tmp_path / "x.npz").exists()


def test_samples_that_would_not_fit_in_memory_are_refused_before_drawing(tmp_path, monkeypatch):
    from genbench.bench.engine import timing

    monkeypatch.setattr(sampling, "available_memory_bytes", lambda: 2**20)  # 1 MiB: 445 samples fit
    run_dir = untrained_run(tmp_path)
    line = one_line_error(invoke("sample", run_dir, "-n", 1000, "--out", tmp_path / "x.npz"), 1)
    assert "1000 samples of gan need ~2 MiB, 1 MiB is available" in line, line
    assert f"draw at most {2**20 // (3 * 784)} per call" in line and not (tmp_path / "x.npz").exists()
    assert timing.available_memory_bytes() is None or timing.available_memory_bytes() > 0


# --- the small things ---------------------------------------------------------------------------------------
def test_dry_run_shows_the_thread_count_it_would_use():
    (forced,) = json.loads(invoke("run", "--models", "vae", "--threads", 1, "--dry-run").stdout)
    assert forced["threads"]["threads"] == 1 and forced["threads"]["reason"] == "--threads"
    (chosen,) = json.loads(invoke("run", "--models", "vae", "--dry-run").stdout)
    assert chosen["threads"]["threads"] >= 1
    cores = usable_cores()
    if cores >= 2:  # each of --nproc 2's ranks takes its half of the cores
        (ranked,) = json.loads(invoke("run", "--models", "vae", "--nproc", 2, "--dry-run").stdout)
        assert ranked["threads"]["usable"] == cores // 2 and ranked["processes"] == 2


def test_sample_progress_in_a_log_is_plain_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sampling, "PLAIN_PROGRESS_EVERY_S", 0.0)  # a line after every batch
    model = models.build("gan", "smoke")[0].eval()
    undo = log.show(logging.INFO)  # as the bench command shows progress (an API call shows none)
    try:
        images = sampling.draw(model, 10, "sample", seed=0, batch_size=4, progress=True)
    finally:
        undo()
    assert images.shape == (10, 1, 28, 28)
    err = capsys.readouterr().err
    assert "\r" not in err  # stderr is not a terminal here, as in a log
    assert err.splitlines() == [
        "sampling: 10 images", "sampling: 4 of 10 images", "sampling: 8 of 10 images",
        "sampling: 10 of 10 images",
    ]  # fmt: skip


def test_train_classifier_writes_a_new_file_unless_told_to_replace_the_shipped_one(tmp_path, monkeypatch):
    from genbench.bench.engine import data
    from genbench.metrics import features

    written = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: type("D", (), {"test": range(3)})())
    monkeypatch.setattr(features, "train_classifier", lambda d, out, **k: written.append(Path(out)) or 0.5)
    shipped = MNIST.weights_path.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert invoke("train-classifier").exit_code == 0
    assert written == [Path("mnist_classifier.pt")]  # in the current folder, not metrics/weights/
    assert invoke("train-classifier", "--out", MNIST.weights_path).exit_code == 0
    assert written[-1] == MNIST.weights_path  # named explicitly: replaced
    monkeypatch.chdir(MNIST.weights_path.parent)
    line = one_line_error(invoke("train-classifier"), 2)
    assert "the default --out is the shipped" in line and written[-1] == MNIST.weights_path
    assert MNIST.weights_path.read_bytes() == shipped

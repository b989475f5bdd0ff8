"""SIGINT and SIGTERM in every phase of a run: one line, exit 130, status "interrupted" with the
phase, a checkpoint that holds the training done so far, and a resume that ends with the numbers of
an uninterrupted run.

Real signals throughout. Evaluation and start-up are interrupted from outside, in a `bench`
subprocess, at a moment read off the run's own files (status.json says "evaluating"). The other
phases are interrupted from inside this process (os.kill of our own pid at the exact moment a
patched step, checkpoint write, validation or metrics.json write runs), which is what the handler
sees from a terminal or a scheduler, without racing a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_utils import invoke, one_line_error
from reliability_utils import (
    FAST,
    assert_same_numbers,
    bench_cmd,
    fast_run,
    metric_values,
    preload,
    status,
    subprocess_env,
)

from genbench.bench.engine import train
from genbench.core import files

# Evaluation of this many samples lasts long enough (seconds) to be hit from outside.
EVAL_SAMPLES = "500"


@pytest.fixture
def data(mnist_dir, monkeypatch):
    return preload(mnist_dir, monkeypatch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """An uninterrupted FAST run, and one with EVAL_SAMPLES samples."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        preload(mnist_dir, monkeypatch)
        out = tmp_path_factory.mktemp("reference")
        runs = {}
        for name, extra in (("fast", ()), ("eval", ("--n-samples", EVAL_SAMPLES))):
            result, run_dir = fast_run(out, name, *extra)
            assert result.exit_code == 0, result.output
            runs[name] = metric_values(run_dir)
        return runs


def interrupted(result, phase: str, run_dir: Path) -> str:
    line = one_line_error(result, 130)
    assert f"during {phase}" in line or phase == "training", line
    assert f"resume with: bench run --resume {run_dir}" in line
    state = status(run_dir)
    assert state["status"] == "interrupted" and state["reason"], state
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "run.lock").exists()  # released on the way out
    return state["reason"]


def checkpoint_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]


def resume(run_dir: Path) -> None:
    result = invoke("run", "--resume", run_dir, "--no-progress")
    assert result.exit_code == 0, result.output
    assert status(run_dir)["status"] == "done"


def kill_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


# --- from outside: a `bench` subprocess ----------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_during_evaluation_then_resume_gives_the_uninterrupted_numbers(
    sig, tmp_path, mnist_dir, data, reference
):
    args = ("run", *FAST, "--n-samples", EVAL_SAMPLES, "--data-dir", mnist_dir, "--out", tmp_path)
    args += ("--name", "e")
    proc = subprocess.Popen(
        bench_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=subprocess_env(), text=True
    )
    run_dir = tmp_path / "gan-smoke-s0-e"
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 120
    while not (run_dir / "status.json").exists() or "evaluating" not in (status(run_dir)["reason"] or ""):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "training did not finish within 120 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Interrupted")]
    assert len(errors) == 1 and f"Interrupted ({sig.name}) during evaluation" in errors[0], output
    assert "Error" not in output  # a stop the user asked for is not an error
    assert f"--resume {run_dir}" in errors[0]
    assert status(run_dir)["status"] == "interrupted" and not (run_dir / "metrics.json").exists()
    assert checkpoint_state(run_dir)["finished"]
    trained = history.read_text()
    resume(run_dir)
    assert history.read_text() == trained  # the resume went straight to evaluation
    assert_same_numbers(metric_values(run_dir), reference["eval"])


def test_ctrl_c_while_torch_imports_prints_no_traceback():
    proc = subprocess.Popen(
        bench_cmd("list"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=subprocess_env(), text=True
    )
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while proc.poll() is None and "torch" not in maps.read_text():  # torch's libraries are being loaded
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output


# --- from inside: the handler at the exact moment of each phase ----------------------------------------
def test_signal_during_a_training_step_checkpoints_that_step(tmp_path, data, reference, monkeypatch):
    original = train.Trainer._step

    def step_then_signal(self, x):
        original(self, x)
        if self.state.step == 2:
            kill_self(signal.SIGTERM)

    monkeypatch.setattr(train.Trainer, "_step", step_then_signal)
    result, run_dir = fast_run(tmp_path, "t")
    reason = interrupted(result, "training", run_dir)
    assert "SIGTERM" in reason and "step 2" in reason
    assert checkpoint_state(run_dir)["step"] == 2 and not checkpoint_state(run_dir)["finished"]
    monkeypatch.setattr(train.Trainer, "_step", original)
    resume(run_dir)
    assert_same_numbers(metric_values(run_dir), reference["fast"])


def test_signal_during_a_checkpoint_write_lets_it_finish(tmp_path, data, monkeypatch):
    original = train.save_checkpoint

    def signal_then_save(*args):
        kill_self(signal.SIGINT)  # arrives as the file is being written
        original(*args)

    monkeypatch.setattr(train, "save_checkpoint", signal_then_save)
    result, run_dir = fast_run(tmp_path, "c")
    interrupted(result, "training", run_dir)
    state = checkpoint_state(run_dir)  # whole, and readable with weights_only
    assert state["step"] == 10 and not state["finished"]  # the first checkpoint


def test_sigterm_stops_a_long_validation_at_once(tmp_path, data, reference, monkeypatch):
    """The end-of-training validation of a big model: a SIGTERM stops it within one operation, with
    the training already checkpointed; the resume validates, then evaluates."""
    original = train.validate
    timer = threading.Timer(0.5, kill_self, (signal.SIGTERM,))  # from another thread, like a scheduler
    seconds = {}

    def slow_validation(*args, **kwargs):  # 60 s of small operations, like a big model's batches
        timer.start()
        seconds["start"] = time.monotonic()
        for _ in range(6000):
            time.sleep(0.01)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "validate", slow_validation)
    try:
        result, run_dir = fast_run(tmp_path, "v")
    finally:
        timer.cancel()
    reason = interrupted(result, "validation", run_dir)
    assert time.monotonic() - seconds["start"] < 10 and "step 30" in reason
    assert checkpoint_state(run_dir)["finished"] and checkpoint_state(run_dir)["validated_epoch"] < 0
    monkeypatch.setattr(train, "validate", original)
    resume(run_dir)
    assert "val" in (run_dir / "history.csv").read_text()
    assert_same_numbers(metric_values(run_dir), reference["fast"])


def test_signal_while_writing_metrics_leaves_no_half_result(tmp_path, data, monkeypatch):
    original = files.write_json

    def signal_on_metrics(path, obj):
        if Path(path).name == "metrics.json":
            kill_self(signal.SIGINT)
        original(path, obj)

    monkeypatch.setattr(files, "write_json", signal_on_metrics)
    result, run_dir = fast_run(tmp_path, "w")
    interrupted(result, "writing results", run_dir)
    assert checkpoint_state(run_dir)["finished"]


def test_signal_in_another_command_is_one_line(tmp_path, monkeypatch):
    from genbench.bench import report

    monkeypatch.setattr(report, "make_report", lambda *args, **kwargs: kill_self(signal.SIGINT))
    assert "Interrupted (SIGINT)" in one_line_error(invoke("report", "--results", tmp_path), 130)

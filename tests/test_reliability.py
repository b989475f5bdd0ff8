"""Kill and resume, determinism, non-finite training, and the catalogue of bad input.

The kill test runs the real `bench` console script in a subprocess on the smoke profile."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_utils import invoke, one_line_error

from genbench import models

# Measured on the clock (FLOP/s and the peak too; the FLOP counts themselves are deterministic).
TIMING_COLUMNS = {"train_images_per_s", "sample_images_per_s", "peak_memory_mb", "wall_time_s",
                  "train_flops_per_s", "peak_flops_per_s", "utilization"}  # fmt: skip


def numbers(run_dir: Path) -> dict:
    """Every number of a run but its timings and memory (which vary from run to run)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return {k: v["value"] for k, v in metrics.items() if v["column"] not in TIMING_COLUMNS}


def bench_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "genbench.bench.commands.cli", *map(str, args)]


def smoke_run(out, mnist_dir, name, *extra):
    result = invoke(
        "run",
        "--models",
        "vae",
        "--profile",
        "smoke",
        "--data-dir",
        mnist_dir,
        "--out",
        out,
        "--name",
        name,
        "--no-progress",
        *extra,
    )
    assert result.exit_code == 0, result.output
    return out / f"vae-smoke-s0-{name}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, mnist_dir):
    return smoke_run(tmp_path_factory.mktemp("ref"), mnist_dir, "ref")


@pytest.mark.slow
def test_same_seed_same_numbers(reference_run, mnist_dir, tmp_path):
    again = smoke_run(tmp_path, mnist_dir, "again")
    assert numbers(again) == numbers(reference_run)


def _start_and_wait_for_checkpoint(out, mnist_dir, name):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        bench_cmd(
            "run",
            "--models",
            "vae",
            "--profile",
            "smoke",
            "--data-dir",
            mnist_dir,
            "--out",
            out,
            "--name",
            name,
            "--no-progress",
            "--max-steps",
            "60",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    checkpoint = out / f"vae-smoke-s0-{name}" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    return proc, checkpoint.parents[1]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(mnist_dir, tmp_path):
    # both sides in fresh processes, as a user runs them
    (tmp_path / "a").mkdir()
    subprocess.run(
        bench_cmd("run", "--models", "vae", "--profile", "smoke", "--data-dir", mnist_dir,
                  "--out", tmp_path / "a", "--name", "k", "--no-progress", "--max-steps", "60"),
        check=True, capture_output=True,
    )  # fmt: skip
    straight = tmp_path / "a" / "vae-smoke-s0-k"
    proc, run_dir = _start_and_wait_for_checkpoint(tmp_path / "b", mnist_dir, "k")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "running" and not (run_dir / "metrics.json").exists()
    resumed = subprocess.run(
        bench_cmd("run", "--resume", run_dir, "--no-progress"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert numbers(run_dir) == numbers(straight)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_checkpoints_and_exits_cleanly(mnist_dir, tmp_path, sig):
    proc, run_dir = _start_and_wait_for_checkpoint(tmp_path, mnist_dir, "int")
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "--resume" in output
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"


@pytest.mark.slow
def test_nan_loss_fails_the_run_with_the_step_and_model(monkeypatch, mnist_dir, tmp_path):
    vae = models.get_model_class("vae")
    original = vae.loss
    calls = {"n": 0}

    def poisoned(self, x):
        terms = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 18:  # the loop's 17th step on: the first call is the FLOP count at its start
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(vae, "loss", poisoned)
    result = invoke(
        "run",
        "--models",
        "vae",
        "--profile",
        "smoke",
        "--data-dir",
        mnist_dir,
        "--out",
        tmp_path,
        "--name",
        "nan",
        "--no-progress",
    )
    line = one_line_error(result, 1)
    assert "vae" in line and "non-finite loss at step 17" in line and "step 10" in line
    run_dir = tmp_path / "vae-smoke-s0-nan"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite" in status["reason"]
    assert not (run_dir / "metrics.json").exists()


# --- the catalogue of bad input (usage errors: test_cli.py covers names and numbers) ----------------
def _fake_data_dir(tmp_path, mnist_dir, truncate: str | None = None) -> Path:
    from genbench.bench.engine.data import MNIST_FILES, raw_dir

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        source = raw_dir(mnist_dir) / name
        if name == truncate:
            (raw / name).write_bytes(source.read_bytes()[:1000])
        else:
            (raw / name).symlink_to(source)
    return tmp_path / "data"


def test_truncated_mnist_file(tmp_path, mnist_dir):
    data = _fake_data_dir(tmp_path, mnist_dir, truncate="t10k-images-idx3-ubyte")
    line = one_line_error(
        invoke("run", "--models", "vae", "--profile", "smoke", "--data-dir", data, "--out", tmp_path / "r"), 1
    )
    assert "t10k-images-idx3-ubyte" in line and "corrupt or truncated" in line


def test_no_network_when_a_download_is_needed(tmp_path, monkeypatch):
    import socket

    import torchvision

    def offline(*args, **kwargs):  # what urllib raises when DNS fails (a URLError wraps it there)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.delenv("GENBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("run", "--models", "vae", "--profile", "smoke"), 1)
    assert "no network" in line and "--data-dir" in line


def test_unwritable_output_directory(tmp_path, mnist_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = one_line_error(
        invoke(
            "run",
            "--models",
            "vae",
            "--profile",
            "smoke",
            "--data-dir",
            mnist_dir,
            "--out",
            blocker / "results",
        ),
        1,
    )
    assert "--out" in line


def _finished_copy(reference_run, tmp_path) -> Path:
    import shutil

    run_dir = tmp_path / reference_run.name
    shutil.copytree(reference_run, run_dir)
    return run_dir


@pytest.mark.slow
def test_truncated_checkpoint_on_resume(reference_run, tmp_path):
    run_dir = _finished_copy(reference_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4096])
    line = one_line_error(invoke("run", "--resume", run_dir, "--reevaluate", "--no-progress"), 1)
    assert "truncated" in line


@pytest.mark.slow
def test_resume_with_a_changed_config_is_refused(reference_run, tmp_path):
    run_dir = _finished_copy(reference_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config["train_config"]["lr"] = 0.5
    (run_dir / "config.json").write_text(json.dumps(config))
    line = one_line_error(invoke("run", "--resume", run_dir, "--reevaluate", "--no-progress"), 1)
    assert "different run" in line and "train_config" in line


@pytest.mark.slow
def test_resume_with_a_foreign_model_is_refused(reference_run, tmp_path):
    run_dir = _finished_copy(reference_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config["model"] = "gan"
    (run_dir / "config.json").write_text(json.dumps(config))
    line = one_line_error(invoke("run", "--resume", run_dir, "--reevaluate", "--no-progress"), 1)
    assert "GANConfig" in line  # the config of another family does not even parse


def test_config_is_data_not_code(tmp_path):
    """config.json is parsed as data: an unknown field is refused, nothing is evaluated."""
    from genbench.bench.planning.plan import plan_from_config

    config = {
        "model": "vae",
        "profile": "smoke",
        "seed": 0,
        "model_config": {"latent_dim": 8, "__import__('os').system('false')": 1},
        "train_config": {},
        "eval_config": {},
    }
    from genbench.core.errors import UserError

    with pytest.raises(UserError, match="unknown VAEConfig fields"):
        plan_from_config(config)


def test_every_torch_load_is_weights_only():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("bench/*.py"), *root.glob("models/*.py"), *root.glob("metrics/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}:{number}")
    assert not offenders, offenders


def test_collapsed_samples_end_in_a_clear_message(fake_data, monkeypatch):
    """A GAN whose generator ignores z gets a message, not an FID."""
    import torch

    from genbench.bench.engine.evaluate import SampleCollapse, evaluate
    from genbench.metrics.base import EVAL_PROFILES

    gan, _ = models.build("gan", "smoke")
    one = fake_data.test[:1]

    monkeypatch.setattr(
        type(gan), "sample", lambda self, n, generator=None, mode=None: one.expand(n, -1, -1, -1).clone()
    )
    with pytest.raises(SampleCollapse, match="collapsed"):
        evaluate(gan, fake_data, EVAL_PROFILES["smoke"], torch.device("cpu"), seed=0)

"""Status that never lies, options refused before any folder exists, a diverged model that is not a
result, and the catalogue of careless input that must end in one line (never a traceback)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess

import pytest
import torch
from cli_utils import invoke, one_line_error
from reliability_utils import FAST, fast_run, preload, status

from genbench import models
from genbench.bench.engine import train
from genbench.bench.engine.evaluate import SampleCollapse, check_not_collapsed
from genbench.bench.engine.train import Diverged, RunOptions, Trainer
from genbench.bench.record import results
from genbench.core import files
from genbench.core.errors import UserError


@pytest.fixture
def data(mnist_dir, monkeypatch):
    return preload(mnist_dir, monkeypatch)


# --- every option is checked before a folder exists, --dry-run included ----------------------------------
@pytest.mark.parametrize(
    "args, code, needle",
    [
        (("--lr", "inf"), 2, "lr must be a positive number"),
        (("--n-samples", "20"), 2, "use at least 128 samples"),
        (("--n-samples", "5", "--allow-few-samples"), 2, "at least 10 samples"),
        (("--batch-size", "100000"), 2, "exceeds the 55000 training images"),
        (("--seeds", "99999999999999999999"), 2, "--seeds"),
        (("--device", "nonsense"), 2, "is not a device"),
        (("--device", ""), 2, "is not a device"),
        (("--device", "meta"), 2, "runs on cpu, cuda"),
        (("--cache-dir", "FILE/cache"), 1, "is a file, not a folder"),
        (("--out", "FILE/res"), 1, "is a file, not a folder"),
    ],
    ids=["lr-inf", "n-samples", "n-samples-allowed", "batch-size", "seed", "device", "device-empty",
         "device-meta", "cache-dir", "out"],
)  # fmt: skip
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_bad_options_are_refused_before_any_folder_exists(args, code, needle, dry_run, tmp_path, data):
    (tmp_path / "FILE").write_text("a file where a folder is expected")
    args = tuple(str(tmp_path / a) if a.startswith("FILE/") else a for a in args)
    out = ("--out", tmp_path / "res") if "--out" not in args else ()
    result = invoke("run", *FAST, *out, *args, *(("--dry-run",) if dry_run else ()))
    assert needle in one_line_error(result, code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("floors", "--device", "nonsense"), "is not a device"),
        (("floors", "--results", "FILE/r"), "is a file"),
        (("floors", "--cache-dir", "FILE/c"), "is a file"),
        (("report", "--out", "/proc/genbench-report"), "cannot be created"),
        (("report", "--out", "FILE/report"), "is a file"),
        (("train-classifier", "--out", "FILE/w.pt"), "is a file"),
    ],
    ids=["floors-device", "floors-results", "floors-cache", "report-proc", "report-file", "classifier-out"],
)
def test_other_commands_check_their_folders_first(args, needle, tmp_path, monkeypatch):
    from genbench.bench.engine import data as datasets

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(datasets, "load_dataset", no_data)  # and so nothing is trained or computed
    (tmp_path / "FILE").write_text("a file")
    args = tuple(str(tmp_path / a) if a.startswith("FILE/") else a for a in args)
    assert needle in one_line_error(invoke(*args), 2 if "--device" in args else 1)


# --- status.json is final on every way out ---------------------------------------------------------------
def test_a_failed_config_write_leaves_status_failed(tmp_path, data, monkeypatch):
    original = files.write_json

    def disk_full(path, obj):
        if path.name == "config.json":
            raise UserError(f"cannot write to {path.parent} (No space left on device)")
        original(path, obj)

    monkeypatch.setattr(files, "write_json", disk_full)
    result, run_dir = fast_run(tmp_path, "cfg")
    assert "No space left" in one_line_error(result, 1)
    assert status(run_dir) | {"updated": None} == {
        "status": "failed",
        "reason": f"cannot write to {run_dir} (No space left on device)",
        "updated": None,
    }


def test_a_crash_in_training_leaves_status_failed(tmp_path, data, monkeypatch):
    def boom(self, x):
        raise RuntimeError("boom in a training step")

    monkeypatch.setattr(Trainer, "_step", boom)
    result, run_dir = fast_run(tmp_path, "crash")
    assert isinstance(result.exception, RuntimeError)  # a bug shows its traceback...
    assert status(run_dir)["status"] == "failed" and status(run_dir)["reason"] == "boom in a training step"
    assert not (run_dir / "run.lock").exists()  # ...and leaves the run resumable


def _started_run(tmp_path):
    from genbench.bench.execute import run as runs
    from genbench.bench.planning import plan as plans

    plan = plans.plan("gan", "smoke", 0)
    return runs.start(plan, RunOptions(torch.device("cpu")), tmp_path, "s")


def test_resuming_a_done_run_needs_reevaluate(tmp_path):
    run_dir = _started_run(tmp_path)
    results.set_status(run_dir, "done")
    line = one_line_error(invoke("run", "--resume", run_dir), 1)
    assert "is done" in line and "--reevaluate" in line and f"bench eval {run_dir}" in line
    assert "--resume" in one_line_error(invoke("run", "--models", "gan", "--reevaluate", "--dry-run"), 2)


def test_a_second_process_gets_run_in_use(tmp_path):
    run_dir = _started_run(tmp_path)
    with results.run_lock(run_dir):  # this process holds it, as a first `bench run --resume` would
        holder = json.loads((run_dir / "run.lock").read_text())
        line = one_line_error(invoke("run", "--resume", run_dir), 1)
        with (
            pytest.raises(results.RunInUse),
            results.run_lock(run_dir),
        ):  # the lock itself, raced past the check
            pass
    assert "run in use" in line and f"pid {holder['pid']} on {socket.gethostname()}" in line
    assert status(run_dir)["status"] == "running"  # untouched by the refused process
    assert not (run_dir / "run.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    with results.run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] != gone.pid
    assert f"stale lock of {tmp_path} (pid {gone.pid}" in capsys.readouterr().err
    lock.write_text(json.dumps({"pid": gone.pid, "host": "another-host", "since": "earlier"}))
    with pytest.raises(results.RunInUse, match="another-host"):  # cannot tell: not ours to take
        with results.run_lock(tmp_path):
            pass


@pytest.mark.parametrize("field, value", [("model_config", []), ("data_dir", 5), ("run_id", None)])
def test_a_damaged_config_is_one_line(field, value, tmp_path):
    run_dir = _started_run(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(config | {field: value}))
    assert "is not a genbench run config" in one_line_error(invoke("run", "--resume", run_dir), 1)


# --- a diverged model is not a result --------------------------------------------------------------------
def test_the_issues_diverged_gan_ends_failed(tmp_path, data):
    """`--lr 1e9` reached losses near 1e20 and ended done with an FID."""
    result, run_dir = fast_run(tmp_path, "div", "--lr", "1e9")
    line = one_line_error(result, 1)
    assert "training diverged" in line and "lower --lr" in line
    assert status(run_dir)["status"] == "failed" and "diverged" in status(run_dir)["reason"]
    assert not (run_dir / "metrics.json").exists()


def test_an_exploding_loss_stops_training(fake_data, tmp_path, monkeypatch):
    vae = models.get_model_class("vae")
    original = vae.loss

    def exploding(self, x):
        terms = original(self, x)
        if self.training and torch.is_grad_enabled():
            exploding.calls += 1
            if exploding.calls > 6:  # finite, but a million times the start
                terms["loss"] = terms["loss"] * 1e6
        return terms

    exploding.calls = 0
    monkeypatch.setattr(vae, "loss", exploding)
    torch.manual_seed(0)
    model, cfg = models.build("vae", "smoke")
    cfg = dataclasses.replace(
        cfg, max_steps=12, batch_size=16, log_every=2, checkpoint_every=4, val_images=32
    )
    trainer = Trainer(model, fake_data, cfg, 0, RunOptions(torch.device("cpu"), progress=False),
                      tmp_path / "last.pt", {})  # fmt: skip
    exploding.calls = 0  # the FLOP count at the Trainer's start called the loss once; not a step
    with pytest.raises(Diverged, match="at step 7, over 1e\\+04 times") as err:
        trainer.run()
    assert "last good checkpoint (step 4)" in str(err.value)


def test_flat_or_identical_samples_are_refused_and_real_images_are_not(fake_data):
    model = models.build("gan", "smoke")[0]
    test = fake_data.test
    check_not_collapsed(model, test, test)  # no false positive on real images
    levels = (40 + torch.arange(len(test)) * 3 % 180).to(torch.uint8)
    flat = levels[:, None, None, None].expand_as(test).clone()  # each image one grey, all different
    with pytest.raises(SampleCollapse, match="flat images"):
        check_not_collapsed(model, flat, test)
    with pytest.raises(SampleCollapse, match="collapsed"):
        check_not_collapsed(model, test[:1].expand(len(test), -1, -1, -1).clone(), test)


# --- what users noticed -----------------------------------------------------------------------------------
def test_progress_in_a_log_is_plain_lines(tmp_path, data):
    """stderr is not a terminal here (CliRunner, like `2> log`): no carriage-return frames."""
    result = invoke("run", *FAST, "--out", tmp_path, "--name", "p")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert "gan s0: step 5/30, loss " in result.output
    assert "evaluation: sampling, 130 images" in result.output  # each evaluation step says it starts


def test_train_classifier_checks_out_before_training(tmp_path, monkeypatch):
    from genbench.metrics import features

    monkeypatch.setattr(features, "train_classifier", lambda *a, **k: pytest.fail("trained first"))
    (tmp_path / "FILE").write_text("x")
    assert "--out" in one_line_error(invoke("train-classifier", "--out", tmp_path / "FILE" / "w.pt"), 1)


def test_stop_flag_leaves_the_handlers_as_it_found_them():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with train.StopFlag():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_job_of_several_runs_says_where_it_is():
    from genbench.bench.execute.run import _position

    assert _position(0, 1, 0.0) == ""
    assert _position(0, 5, 0.4) == "[run 1 of 5, 0m00s elapsed] "
    assert _position(2, 5, 100.0) == "[run 3 of 5, 1m40s elapsed, ~2m30s to go] "

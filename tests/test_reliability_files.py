"""Round three of the hostile sweep: no file the suite reads can run code, and the suite writes only
what is its own. Each test checks what the user sees: the exit code, the one-line error, and that
nothing was run or written."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_utils import invoke, one_line_error
from reliability_utils import fast_run, preload

from genbench.core import files
from genbench.core.errors import UserError


class Payload:
    """A pickle that, loaded in full, runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _sweep(out: Path, job_id: str) -> Path:
    """OUT/.sweep/s with one run whose last job is a local job ``job_id``; returns its jobs folder."""
    folder = out / ".sweep" / "s"
    (folder / "jobs").mkdir(parents=True)
    job = {"job_id": job_id, "launcher": "local", "host": "elsewhere", "action": "start"}
    (folder / "sweep.json").write_text(
        json.dumps({"sweep": "s", "runs": {"vae-smoke-s0-s-mnist": {"jobs": [job]}}})
    )
    return folder / "jobs"


def test_sweep_status_never_unpickles_a_planted_result(tmp_path):
    marker = tmp_path / "ran"
    jobs = _sweep(tmp_path / "out", "123")
    (jobs / "123_0_result.pkl").write_bytes(pickle.dumps(("success", Payload(marker))))
    result = invoke("sweep", "--status", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not marker.exists() and "UNREADABLE RESULT" in result.output
    (jobs / "123_0_result.pkl").write_bytes(pickle.dumps(("success", {"run": "done"})))
    assert "COMPLETED" in invoke("sweep", "--status", "--out", tmp_path / "out").output  # submitit's own


def test_sweep_job_ids_are_read_as_data(tmp_path):
    marker = tmp_path / "ran"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil_0_result.pkl").write_bytes(pickle.dumps(("success", Payload(marker))))
    for n, bad in enumerate(("../../../../elsewhere/evil", "abc", "")):
        out = tmp_path / f"out{n}"
        _sweep(out, bad)
        message = one_line_error(invoke("sweep", "--status", "--out", out), 1)
        assert "not a Slurm or local job id" in message and "sweep.json" in message
    assert not marker.exists()


def test_inception_weights_that_would_run_code_are_refused_before_torch_fidelity_loads_them(
    tmp_path, mnist_dir
):
    marker = tmp_path / "ran"
    hostile = tmp_path / "weights.pth"
    torch.save({"state": Payload(marker)}, hostile)
    floors = (
        "floors",
        "--network",
        "inception",
        "--n-samples",
        "10",
        "--allow-few-samples",
        "--data-dir",
        mnist_dir,
    )
    out = tmp_path / "results"
    for weights in (hostile, "/etc/passwd"):
        message = one_line_error(invoke(*floors, "--results", out, "--inception-weights", weights), 1)
        assert "is not a plain Inception weights file" in message, message
        assert not marker.exists() and not (out / "floors").exists()


def test_a_run_config_naming_a_module_imports_nothing(tmp_path, monkeypatch):
    """config.json's "model" (or "model_origin") naming module:Class: resume, eval and sample refuse
    with one line, and the module (importable from the current folder) is never imported."""
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(f"import os\nos.mkdir({str(marker)!r})\nclass X: pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "results" / "r"
    run_dir.mkdir(parents=True)
    for config in ({"model": "evilmod:X"}, {"model": "x", "model_origin": "evilmod:X"}):
        (run_dir / "config.json").write_text(json.dumps({**config, "run_id": "r", "data_dir": None}))
        before = sorted(p.name for p in run_dir.iterdir())
        commands = (
            ("run", "--resume", run_dir),
            ("eval", run_dir),
            ("sample", run_dir, "-n", 1, "--out", "s.png"),
        )
        for command in commands:
            message = one_line_error(invoke(*command), 1)
            assert "not the name of a model family" in message or "GENBENCH_PLUGINS=evilmod:X" in message, (
                message
            )
            assert not marker.exists(), command
        assert sorted(p.name for p in run_dir.iterdir()) == before and not (tmp_path / "s.png").exists()


def test_outputs_that_are_not_regular_files_are_refused_and_left_alone(tmp_path):
    fifo, folder = tmp_path / "x.npz", tmp_path / "y.json"
    os.mkfifo(fifo)
    folder.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    message = one_line_error(invoke("sample", run_dir, "-n", 1, "--out", fifo), 1)
    assert "is not a regular file" in message
    message = one_line_error(invoke("train-classifier", "--out", tmp_path / "x.npz", "--epochs", 1), 1)
    assert "is not a regular file" in message
    for target in (fifo, folder):
        with pytest.raises(UserError, match="is not a regular file"):
            files.write_json(target, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "x.npz", "y.json"]  # no temporary file left


def test_sample_never_writes_into_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "samples.png").write_bytes(b"the run's own grid")
    for out in (run_dir / "samples.png", run_dir / "sub" / "new.npz"):
        assert "inside the run folder" in one_line_error(invoke("sample", run_dir, "-n", 1, "--out", out), 1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["samples.png"]
    assert (run_dir / "samples.png").read_bytes() == b"the run's own grid"


def test_no_data_folder_is_created_at_a_root_nobody_chose(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path / "nonexistent"))
    message = one_line_error(invoke("floors", "--results", tmp_path / "r"), 1)
    assert "data directory does not exist" in message and "$GENBENCH_DATA" in message
    monkeypatch.delenv("GENBENCH_DATA")
    assert "is empty" in one_line_error(invoke("floors", "--results", tmp_path / "r", "--data-dir", ""), 2)
    assert list(tmp_path.iterdir()) == []


def test_eval_from_inside_a_run_writes_beside_it_never_in_it(tmp_path, mnist_dir, monkeypatch):
    preload(mnist_dir, monkeypatch)
    result, run_dir = fast_run(tmp_path, "r", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.output
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    monkeypatch.chdir(run_dir)
    scored = invoke(
        "eval", ".", "--name", "dot", "--n-samples", 130, "--data-dir", mnist_dir, "--device", "cpu"
    )
    assert scored.exit_code == 0, scored.output
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert (tmp_path / f"{run_dir.name}+eval-dot" / "metrics.json").is_file()


def test_odd_sample_files_are_one_line_errors_or_read_right(tmp_path, mnist_dir):
    """FIFOs (a read that never ends), sparse and meta tensors, a 15000x15000 PNG: one line each.
    uint16..64 pixels in 0..255 read as the uint8 images they are."""
    from PIL import Image

    from genbench.bench.record.sample_files import read_samples

    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28))
    for dtype in (np.uint16, np.uint32, np.uint64):
        np.save(tmp_path / "wide.npy", pixels.astype(dtype))
        torch.save(torch.from_numpy(pixels.astype(dtype)), tmp_path / "wide.pt")
        for name in ("wide.npy", "wide.pt"):
            images = read_samples(tmp_path / name).images
            assert images.dtype == torch.uint8 and torch.equal(
                images[:, 0], torch.from_numpy(pixels).to(torch.uint8)
            )
    np.save(tmp_path / "big.npy", np.full((4, 28, 28), 70000, dtype=np.uint32))
    os.mkfifo(tmp_path / "fifo.npz")
    torch.save(torch.eye(28).to(torch.uint8).to_sparse(), tmp_path / "sparse.pt")
    torch.save(torch.zeros(4, 28, 28, dtype=torch.uint8, device="meta"), tmp_path / "meta.pt")
    (tmp_path / "bomb").mkdir()
    Image.new("L", (15000, 15000)).save(tmp_path / "bomb" / "0.png")
    expected = {"fifo.npz": "not a regular file", "big.npy": "pixel values reach 70000",
                "sparse.pt": "sparse_coo", "meta.pt": "meta", "bomb": "far larger than"}  # fmt: skip
    for name, needle in expected.items():
        result = invoke(
            "eval", "--samples", tmp_path / name, "--data-dir", mnist_dir, "--results", tmp_path / "r"
        )
        assert needle in one_line_error(result, 1), name
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_that_is_a_fifo_is_refused_not_read_forever(tmp_path):
    from genbench.bench.engine.checkpoint import load_weights

    os.mkfifo(tmp_path / "last.pt")
    with pytest.raises(UserError, match="is not a regular file"):
        load_weights(tmp_path / "last.pt", torch.nn.Linear(1, 1))


def test_a_bad_floors_file_is_computed_again(tmp_path, mnist_dir):
    from genbench.bench.engine.data import load_dataset
    from genbench.metrics.fidelity import resolve_network

    np.save(tmp_path / "s.npy", load_dataset("mnist", mnist_dir).test[:150].numpy())
    floor = tmp_path / "results" / "floors" / "mnist_mnist_n150.json"
    floor.parent.mkdir(parents=True)
    sha = resolve_network("mnist").sha256
    for n, bad in enumerate(([], {"sha256": sha, "metrics": {"fid_mnist": {"value": "low"}}})):
        floor.write_text(json.dumps(bad))
        args = (
            "--results",
            tmp_path / "results",
            "--name",
            f"s{n}",
            "--data-dir",
            mnist_dir,
            "--device",
            "cpu",
        )
        scored = invoke("eval", "--samples", tmp_path / "s.npy", *args)
        assert scored.exit_code == 0, scored.output
        assert isinstance(json.loads(floor.read_text())["metrics"]["fid_mnist"]["value"], float)


@pytest.mark.parametrize(
    "log_prob, needle",
    [(float("nan"), "not finite for 16 of 16"), (1000.0, "below 0, impossible for discrete pixels")],
)
def test_an_impossible_likelihood_is_an_error_not_a_number(log_prob, needle):
    """A NaN log_prob, or an "exact" one of +1000 nats (-1.84 bits/dim), ends the evaluation (and so
    the run: failed, with this reason) instead of being reported, let alone bolded as best."""
    from conftest import fake_mnist

    from genbench import models
    from genbench.metrics.base import EvalConfig, EvalContext
    from genbench.metrics.likelihood import ImpossibleLikelihood, likelihood

    model = models.build("pixelcnn", "smoke")[0].eval()
    ctx = EvalContext(model, fake_mnist(), EvalConfig(n_test=16, batch_size=8), torch.device("cpu"), seed=0)
    assert 0 < likelihood(ctx)["bpd"].value < 9  # the model's own log_prob passes
    model.log_prob = lambda x: torch.full((len(x),), log_prob)
    with pytest.raises(ImpossibleLikelihood, match=needle):
        likelihood(ctx)


def test_a_samples_file_of_no_images_costs_the_report_a_panel_not_the_report(tmp_path):
    from types import SimpleNamespace

    from genbench.bench.report import images

    run = SimpleNamespace(path=tmp_path)
    torch.save(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), tmp_path / "samples.pt")
    assert images.load_samples(run).shape == (2, 1, 28, 28)
    torch.save(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), tmp_path / "samples.pt")
    assert images.load_samples(run) is None  # was a ZeroDivisionError in the nearest-neighbour panel


def test_a_garbage_run_lock_is_named_as_such(tmp_path):
    from genbench.bench.record import results

    (tmp_path / results.LOCK).write_bytes(b"\x00garbage")
    with pytest.raises(results.RunInUse, match="names no process genbench can check") as caught:
        results.check_not_in_use(tmp_path)
    assert "None" not in str(caught.value) and (tmp_path / results.LOCK).read_bytes() == b"\x00garbage"


def test_the_hint_for_float_samples_follows_their_range(tmp_path):
    from genbench.bench.record.sample_files import read_samples

    for high, hint in ((1.0, "(x * 255).round()"), (255.0, "(x).round()")):
        np.save(tmp_path / "f.npy", np.linspace(0, high, 4 * 28 * 28, dtype=np.float32).reshape(4, 28, 28))
        with pytest.raises(UserError, match=re.escape(hint)):
            read_samples(tmp_path / "f.npy")

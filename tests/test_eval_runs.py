"""`bench eval RUN_DIR` (a checkpoint under another protocol, beside the run, never over it) and
`bench sample` (a run's samples to a file that `bench eval --samples` reads back)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist

from genbench.bench.commands import external, scoring
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.planning.settings import RunSettings
from genbench.bench.report.load import load_results
from genbench.core.errors import UsageError
from genbench.core.files import file_sha256
from genbench.models import get_model_class

CPU = RunOptions(device=torch.device("cpu"), progress=False)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its SHA-256."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data():
    return fake_mnist(n_train=512, n_test=512)  # enough test images for 300 samples' reference


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data):
    """A smoke VAE trained and evaluated on fake data (256 samples), as `bench run` leaves it."""
    out = tmp_path_factory.mktemp("results")
    plan = plans.plan("vae", "smoke", 0, eval_overrides={"n_test": 64, "iwae_images": 16})
    run_dir = runs.start(plan, CPU, out, name="t")
    runs.execute(run_dir, data, CPU)
    return run_dir


@pytest.fixture(scope="module")
def reevaluated(run_dir, data):
    before = tree(run_dir)
    request = scoring.EvalRequest(
        run_dir=run_dir, n_samples=300, name="n300", settings=RunSettings(device="cpu")
    )
    report, out_dir = scoring.reevaluate(request, echo=click.echo, data=data)
    return before, report, out_dir


def test_reevaluation_goes_beside_the_run_and_leaves_it_untouched(run_dir, reevaluated):
    before, report, out_dir = reevaluated
    assert tree(run_dir) == before
    assert out_dir == run_dir.parent / "vae-smoke-s0-t+eval-n300"
    assert {p.name for p in out_dir.iterdir()} == {
        "config.json", "status.json", "metrics.json", "samples.png", "samples.pt", "interpolation.png",
    }  # fmt: skip
    assert json.loads((out_dir / "status.json").read_text())["status"] == "done"
    config = json.loads((out_dir / "config.json").read_text())
    original_config = json.loads((run_dir / "config.json").read_text())
    assert config["evaluation_of"] == "vae-smoke-s0-t" and config["run_id"] == out_dir.name
    assert (
        config["evaluation"]["overrides"] == {"n_samples": 300} and config["eval_config"]["n_samples"] == 300
    )
    assert config["train_config"] == original_config["train_config"] and config["seed"] == 0
    assert (out_dir / config["checkpoint"]).resolve() == (run_dir / "checkpoints" / "last.pt").resolve()
    assert report["source"]["sha256"] == file_sha256(run_dir / "checkpoints" / "last.pt")
    assert json.loads((out_dir / "metrics.json").read_text()) == json.loads(json.dumps(report))


def test_reevaluation_has_its_own_protocol_and_the_runs_own_numbers(run_dir, reevaluated):
    _, report, _ = reevaluated
    original = json.loads((run_dir / "metrics.json").read_text())
    mine, theirs = report["protocol"], original["protocol"]
    assert mine["n_samples"] == 300 and theirs["n_samples"] == 256
    assert mine.pop("evaluation") == scoring.EVALUATION and "evaluation" not in theirs
    assert {k: v for k, v in mine.items() if k not in ("n_samples", "reference")} == {
        k: v for k, v in theirs.items() if k not in ("n_samples", "reference")
    }
    m, o = report["metrics"], original["metrics"]
    assert m["fid_mnist"]["protocol"]["n_samples"] == 300
    # The same weights (the run's evaluation weights), the same test images: the same likelihood.
    assert m["bpd"]["value"] == pytest.approx(o["bpd"]["value"], rel=1e-6)
    for key in ("train_images_per_s", "peak_memory_mb", "wall_time_s"):  # training cost: the run's own
        assert m[key]["value"] == o[key]["value"] is not None, key
    compiled = [d["train_images_per_s"]["protocol"]["compile"] for d in (m, o)]
    assert compiled == [False, False]  # as the run trained (config.json), not as bench eval runs


def test_reevaluating_a_budgeted_run_keeps_its_budget_in_the_protocol(tmp_path, data):
    """A run cut at a compute budget is another comparison than a full schedule: its re-evaluation
    carries the budget too, or the report would group it with unbudgeted runs."""
    plan = plans.plan(
        "flow",
        "smoke",
        0,
        train_overrides={"compute_budget": 1.0, "batch_size": 16},
        eval_overrides={"n_test": 32, "iwae_images": 8, "n_samples": 32, "feature_networks": ()},
    )  # fmt: skip  (1 FLOP buys one step; a flow's samples spread from its first step)
    run_dir = runs.start(plan, CPU, tmp_path / "results", name="b")
    runs.execute(run_dir, data, CPU)
    request = scoring.EvalRequest(
        run_dir=run_dir, n_samples=48, name="n48", settings=RunSettings(device="cpu")
    )
    report, _ = scoring.reevaluate(request, echo=click.echo, data=data)
    assert report["protocol"]["compute_budget"] == 1.0 and report["protocol"]["n_samples"] == 48
    assert json.loads((run_dir / "metrics.json").read_text())["protocol"]["compute_budget"] == 1.0


def test_the_report_shows_the_reevaluation_as_a_second_protocol_group(run_dir, reevaluated):
    groups = load_results(run_dir.parent).groups
    assert sorted(g.protocol["n_samples"] for g in groups) == [256, 300]
    assert all([r.model for r in g.runs] == ["vae"] for g in groups)


def test_a_reevaluation_is_never_overwritten(run_dir, reevaluated):
    _, _, out_dir = reevaluated
    before = tree(out_dir)
    assert "exists" in one_line_error(invoke("eval", run_dir, "--name", "n300", "--n-samples", 300), 1)
    assert tree(out_dir) == before


@pytest.mark.parametrize(
    ("make", "needle", "code"),
    [
        (lambda run, tmp: tmp, "is not a run folder", 1),
        (lambda run, tmp: Path(f"{run}+eval-n300"), "is a re-evaluation (bench eval) of", 1),
        (lambda run, tmp: _without_checkpoint(run, tmp), "no checkpoint at", 1),
    ],
)
def test_what_cannot_be_reevaluated_is_one_line(run_dir, reevaluated, tmp_path, make, needle, code):
    target = make(run_dir, tmp_path)
    before = sorted(p.name for p in target.parent.iterdir())
    assert needle in one_line_error(invoke("eval", target, "--n-samples", 300), code)
    assert sorted(p.name for p in target.parent.iterdir()) == before


def _without_checkpoint(run_dir: Path, tmp: Path) -> Path:
    copy = tmp / run_dir.name
    copy.mkdir()
    (copy / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    return copy


def test_sampler_steps_apply_only_to_a_family_that_has_them(run_dir):
    assert "vae has no sampler step count" in one_line_error(
        invoke("eval", run_dir, "--sampler-steps", 10), 2
    )
    config = get_model_class("diffusion").profiles["smoke"]()[0]
    assert scoring.with_sampler_steps("diffusion", config, 3).sample_steps == 3
    assert dataclasses.replace(config, sample_steps=3) == scoring.with_sampler_steps("diffusion", config, 3)
    with pytest.raises(UsageError, match="sample_steps must be in 1..timesteps"):
        scoring.with_sampler_steps("diffusion", config, config.timesteps + 1)


def test_options_that_do_not_apply_to_a_run_are_usage_errors(run_dir):
    assert "--key does not apply" in one_line_error(invoke("eval", run_dir, "--key", "x"), 2)
    assert "--dataset does not apply" in one_line_error(invoke("eval", run_dir, "--dataset", "mnist"), 2)


def test_sample_writes_the_runs_samples_as_a_npz(run_dir, tmp_path):
    ran = invoke("sample", run_dir, "-n", 20, "--out", tmp_path / "a.npz", "--no-progress")
    assert ran.exit_code == 0, ran.output
    with np.load(tmp_path / "a.npz") as archive:
        assert archive.files == ["images"]
        images = archive["images"]
    assert images.dtype == np.uint8 and images.shape == (20, 1, 28, 28)
    assert invoke("sample", run_dir, "-n", 20, "--out", tmp_path / "b.npz", "--no-progress").exit_code == 0
    assert invoke("sample", run_dir, "-n", 20, "--out", tmp_path / "c.npz", "--seed", 1).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "b.npz")["images"], images)
    assert not np.array_equal(np.load(tmp_path / "c.npz")["images"], images)
    # the run's weights: its checkpoint's, not a fresh initialisation
    model = get_model_class("vae")(plans.read_run(run_dir)[1].model_config)
    fresh = model.sample(20, generator=torch.Generator().manual_seed(0), mode="mean").numpy()
    assert not np.array_equal(fresh, images)


def test_sample_draws_at_the_evaluations_batch_for_its_device(run_dir, tmp_path, monkeypatch):
    """Batch i is drawn from (seed, i): bench sample gives the evaluation's images only at the
    evaluation's batch size on that device (2000 on CUDA in the full profile, not 256)."""
    from genbench.bench.commands import sampling
    from genbench.metrics.base import EvalConfig

    seen, draw = [], sampling.draw
    monkeypatch.setattr(EvalConfig, "sample_batch_size", lambda self, device: 3)
    monkeypatch.setattr(sampling, "draw", lambda *a: seen.append(a[4]) or draw(*a))
    ran = invoke("sample", run_dir, "-n", 5, "--out", tmp_path / "a.npz", "--no-progress")
    assert ran.exit_code == 0, ran.output
    assert seen == [3]


def test_sample_writes_a_png_grid_for_a_few_and_refuses_many(run_dir, tmp_path):
    assert invoke("sample", run_dir, "-n", 16, "--out", tmp_path / "g.png", "--mode", "sample").exit_code == 0
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert "at most 256" in one_line_error(
        invoke("sample", run_dir, "-n", 300, "--out", tmp_path / "h.png"), 2
    )
    assert "vae samples with mean, sample" in one_line_error(
        invoke("sample", run_dir, "-n", 4, "--out", tmp_path / "i.npz", "--mode", "nope"), 2
    )
    assert ".npz" in one_line_error(invoke("sample", run_dir, "-n", 4, "--out", tmp_path / "j.jpg"), 2)
    assert not any((tmp_path / n).exists() for n in ("h.png", "i.npz", "j.jpg"))


def test_sampled_npz_scores_as_the_reevaluation_did(run_dir, reevaluated, data, tmp_path):
    """The round trip: `bench sample` draws what the evaluation drew (same weights, sampler, seed
    and batches), and `bench eval --samples` scores it as the evaluation did."""
    _, report, _ = reevaluated
    assert invoke("sample", run_dir, "-n", 300, "--out", tmp_path / "s.npz", "--no-progress").exit_code == 0
    request = scoring.EvalRequest(
        samples=tmp_path / "s.npz", results=tmp_path / "r", settings=RunSettings(device="cpu")
    )
    scored, out_dir = external.score_external(request, echo=click.echo, data=data)
    assert scored.doc["metrics"]["fid_mnist"]["value"] == pytest.approx(
        report["metrics"]["fid_mnist"]["value"]
    )
    assert scored.doc["source"]["sha256"] == hashlib.sha256((tmp_path / "s.npz").read_bytes()).hexdigest()
    assert out_dir.name.startswith("ext-s-")


@pytest.mark.slow
def test_bench_eval_of_a_real_smoke_run_finds_its_data_and_adds_a_group(tmp_path, mnist_dir):
    """The command as a user types it: the data folder comes from the run's config.json."""
    ran = invoke("run", "--models", "vae", "--profile", "smoke", "--data-dir", mnist_dir, "--out", tmp_path,
                 "--name", "t", "--threads", 1, "--no-progress")  # fmt: skip
    assert ran.exit_code == 0, ran.output
    run_dir = tmp_path / "vae-smoke-s0-t"
    before = tree(run_dir)
    again = invoke("eval", run_dir, "--n-samples", 300, "--name", "n300", "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert "vae-smoke-s0-t+eval-n300: " in again.stdout and "n_samples=300" in again.stdout
    assert tree(run_dir) == before
    groups = load_results(tmp_path).groups
    assert sorted((g.protocol["n_samples"], g.protocol.get("evaluation")) for g in groups) == [
        (256, None), (300, scoring.EVALUATION),
    ]  # fmt: skip

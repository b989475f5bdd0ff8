"""--set SECTION.FIELD=VALUE and --grid: typed, validated against the config dataclasses, recorded in
config.json, kept on resume, in the run id and the report's protocol groups."""

import json

import pytest
from cli_utils import invoke, one_line_error
from conftest import LIGHT

from genbench.bench.commands.sampling import load_run
from genbench.bench.execute import run as runs
from genbench.bench.execute import sweep
from genbench.bench.planning import overrides as typed
from genbench.bench.planning import plan as plans
from genbench.bench.planning.settings import RunSettings
from genbench.bench.report import make_report
from genbench.bench.report.load import load_results
from genbench.core.errors import UsageError
from genbench.models.base import TrainConfig
from genbench.models.vae import VAEConfig

VAE_FIELDS = "latent_dim, channels, hidden, kl_warmup_steps"


@pytest.mark.parametrize(
    ("assignment", "says"),
    [
        ("model.nosuch=1", "has no settable field 'nosuch'"),
        ("model.latent_dim=abc", "'abc' is not an int"),
        ("model.latent_dim=1.5", "'1.5' is not an int"),
        ("model.channels=8,16,32", "is not 2 comma-separated values"),
        ("model.levels=2", "the dataset decides it"),
    ],
)
def test_a_bad_model_field_or_value_is_one_line_naming_the_valid_fields(tmp_path, assignment, says):
    out = tmp_path / "out"
    result = invoke("run", "--models", "vae", "--profile", "smoke", "--set", assignment, "--out", out)
    line = one_line_error(result, 2)
    assert says in line and f"valid fields of vae's model config: {VAE_FIELDS}" in line, line
    assert not out.exists()  # nothing written


def test_a_bad_section_train_field_or_range_is_one_line_too(tmp_path):
    line = one_line_error(invoke("run", "--set", "optim.lr=1", "--dry-run"), 2)
    assert "unknown section 'optim'" in line and "train.FIELD (epochs, batch_size, lr" in line
    assert "eval.FIELD (n_test" in line
    line = one_line_error(invoke("run", "--set", "train.ema_decay=yes", "--dry-run"), 2)
    assert "'yes' is not a float" in line and "ema_decay" in line and "warmup_steps" in line
    line = one_line_error(invoke("run", "--set", "train.ema_decay=1.5", "--dry-run"), 2)
    assert "ema_decay must be in (0, 1)" in line
    line = one_line_error(invoke("run", "--set", "model.latent_dim=0", "--profile", "smoke", "--dry-run"), 2)
    assert "latent_dim must be at least 1" in line
    line = one_line_error(invoke("run", "--set", "lr=1", "--dry-run"), 2)
    assert "SECTION.FIELD=VALUE" in line
    line = one_line_error(invoke("run", "--set", "train.epochs=2", "--epochs", "3", "--dry-run"), 2)
    assert "--set train.epochs and --epochs" in line
    line = one_line_error(invoke("run", "--set", "train.lr=1", "--set", "train.lr=2", "--dry-run"), 2)
    assert "given twice" in line


def test_values_are_parsed_by_the_fields_type():
    sets = ("model.channels=(4, 8)", "train.grad_clip=none", "train.betas=0.5,0.9", "train.lr=1e-3",
            "eval.allow_few_samples=true", "eval.feature_networks=mnist",
            "train.optimizer=adamw")  # fmt: skip
    assert typed.resolve("vae", VAEConfig, sets) == {
        "eval.allow_few_samples": True,
        "eval.feature_networks": ("mnist",),
        "model.channels": (4, 8),
        "train.betas": (0.5, 0.9),
        "train.grad_clip": None,
        "train.lr": 0.001,
        "train.optimizer": "adamw",
    }
    plan = plans.plan(
        "vae", "smoke", 0, sets=("model.channels=4,8", "train.ema_decay=0.999", "eval.iwae_k=3")
    )
    assert plan.model_config.channels == (4, 8) and plan.model_config.image_shape == (1, 28, 28)
    assert plan.train_config.ema_decay == 0.999 and plan.eval_config.iwae_k == 3
    assert plan.overrides == {"eval.iwae_k": 3, "model.channels": (4, 8), "train.ema_decay": 0.999}
    assert isinstance(plan.train_config, TrainConfig)


def test_the_tag_names_the_resolved_values():
    tag = lambda *sets: typed.tag(typed.resolve("vae", VAEConfig, sets))  # noqa: E731
    assert tag() == ""
    assert tag("model.latent_dim=8") == tag("model.latent_dim=08") != tag("model.latent_dim=16")
    assert tag("model.latent_dim=8", "train.lr=0.1") == tag("train.lr=.1", "model.latent_dim=8")
    assert tag("model.latent_dim=8").startswith("set-")


def _request(out, *sets, **changes):
    settings = RunSettings(device="cpu", threads=1, sets=(*LIGHT, *sets))
    return plans.RunRequest(
        models=("vae",), profile="smoke", settings=settings, out=out, name="same", progress=False, **changes
    )


def test_a_run_resumes_with_its_overrides_though_the_command_omits_them(tmp_path, fake_loading):
    request = _request(tmp_path, "model.latent_dim=16")
    (plan,) = plans.plan_runs(request)
    options = runs.RunOptions(runs.resolve_device("cpu"), progress=False)
    run_dir = runs.start(plan, options, tmp_path, "same")  # a run stopped before its first checkpoint
    config = json.loads((run_dir / "config.json").read_text())
    assert config["overrides"]["model.latent_dim"] == 16 and config["model_config"]["latent_dim"] == 16
    assert run_dir.name == f"vae-smoke-s0-{typed.tag(plan.overrides)}-same"

    refused = plans.RunRequest(resume=run_dir, settings=RunSettings(sets=("model.latent_dim=16",)))
    with pytest.raises(UsageError, match="drop --set"):
        runs.run_all(refused)
    resume = plans.RunRequest(resume=run_dir, settings=RunSettings(device="cpu", threads=1), progress=False)
    (report,) = runs.run_all(resume)
    assert report["protocol"]["overrides"]["model.latent_dim"] == 16
    model = load_run(run_dir, runs.resolve_device("cpu")).model
    assert model.config.latent_dim == 16 and model.prior_latents(3).shape == (3, 16)


def test_runs_differing_only_in_a_set_value_get_their_own_folder_and_report_group(tmp_path, fake_loading):
    for latent in (16, 32):
        runs.run_all(_request(tmp_path, f"model.latent_dim={latent}"))
    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("vae"))
    assert len(folders) == 2 and all(f.endswith("-same") for f in folders)
    results = load_results(tmp_path)
    assert not results.notes  # neither run is taken for a repeat of the other's seed
    assert sorted(g.protocol["overrides"]["model.latent_dim"] for g in results.groups) == [16, 32]
    markdown = make_report(tmp_path, formats=("md",), figures=False).markdown
    lines = [line for line in markdown.splitlines() if "overrides (--set)" in line]
    assert len(lines) == 2 and "model.latent_dim 16;" in lines[0] + lines[1]
    assert "model.latent_dim 32;" in lines[0] + lines[1] and "eval.n_test 64" in lines[0]


def test_sweep_grid_plans_the_product_each_run_with_its_set(tmp_path):
    axes = (typed.split_grid("model.latent_dim=8,16,32"), typed.split_grid("train.betas=(0.5,0.9),(0,0.99)"))
    request = sweep.SweepRequest(
        models=("vae", "gan"), profiles=("smoke",), out=tmp_path, grid=axes,
        settings=RunSettings(sets=("train.lr=0.01",)),
    )  # fmt: skip
    cells = sweep.grid(request)
    assert len(cells) == 2 * 3 * 2 and len({c.run_id for c in cells}) == 12
    assert {c.sets for c in cells if c.model == "vae"} == {
        ("train.lr=0.01", f"model.latent_dim={d}", f"train.betas={b}")
        for d in (8, 16, 32)
        for b in ("(0.5,0.9)", "(0,0.99)")
    }
    for cell in cells:
        (plan,) = plans.plan_runs(request.run_request(cell))
        latent, betas = (typed.parse_value(s.split("=")[1], tuple[float, ...]) for s in cell.sets[1:])
        assert (plan.model, plan.model_config.latent_dim, plan.train_config.betas) == (
            cell.model,
            *latent,
            betas,
        )
        assert plan.train_config.lr == 0.01
    result = invoke("sweep", "--models", "vae", "--profile", "smoke", "--out", tmp_path, "--dry-run",
                    "--launcher", "local", "--grid", "model.latent_dim=8,16",
                    "--set", "train.lr=0.01")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train.lr=0.01 model.latent_dim=8 " in result.output and "model.latent_dim=16" in result.output
    assert result.output.count(" start ") == 2
    line = one_line_error(invoke("sweep", "--models", "vae", "--grid", "model.latent_dim=8,,16"), 2)
    assert "SECTION.FIELD=V1,V2" in line


def test_grid_values_split_outside_parentheses():
    assert typed.split_grid("model.channels=(8,16),(16, 32)") == (
        "model.channels=(8,16)",
        "model.channels=(16, 32)",
    )
    with pytest.raises(UsageError, match="unknown section"):
        typed.split_grid("x.y=1,2")

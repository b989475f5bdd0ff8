"""`bench` through click's CliRunner: the real smoke run on MNIST and the usage errors."""

import json

import pytest
from cli_utils import invoke, one_line_error

RUN_FILES = (
    "config.json",
    "status.json",
    "history.csv",
    "metrics.json",
    "samples.png",
    "samples.pt",
    "interpolation.png",
    "checkpoints/last.pt",
)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("results")
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
        "t",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    return out / "vae-smoke-s0-t", result


@pytest.mark.slow
def test_smoke_run_writes_every_file(vae_run):
    run_dir, result = vae_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "done"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "vae" and config["seed"] == 0 and config["versions"]["torch"]
    doc = json.loads((run_dir / "metrics.json").read_text())
    metrics = doc["metrics"]
    assert (
        doc["schema"] == 2 and doc["protocol"]["dataset"] == "mnist" and doc["protocol"]["test_images"] == 256
    )
    assert metrics["bpd"]["kind"] == "estimate" and metrics["bpd"]["value"] > 0  # one posterior draw
    assert 0 < metrics["bpd"]["stderr"] < metrics["bpd"]["value"]
    assert metrics["iwae_nats"]["kind"] == "estimate" and metrics["iwae_nats"]["k"] == 8
    assert metrics["fid_mnist"]["variant"] == "decoder mean"
    assert metrics["fid_mnist[sample]"]["variant"] == "sampled pixels"
    assert "Bits/dim" in result.output and "seed 0" in result.output


@pytest.mark.slow
def test_existing_run_folder_is_never_overwritten(vae_run, mnist_dir):
    run_dir, _ = vae_run
    before = (run_dir / "metrics.json").read_bytes()
    result = invoke(
        "run",
        "--models",
        "vae",
        "--profile",
        "smoke",
        "--data-dir",
        mnist_dir,
        "--out",
        run_dir.parent,
        "--name",
        "t",
    )
    assert "exists" in one_line_error(result, 1) and "--overwrite" in result.output
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_its_numbers(vae_run):
    run_dir, _ = vae_run
    before = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    result = invoke("run", "--resume", run_dir, "--reevaluate", "--no-progress")
    assert result.exit_code == 0, result.output
    after = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("bpd", "iwae_nats", "recon_mse"):
        assert after[key]["value"] == before[key]["value"], key


@pytest.mark.slow
def test_options_that_change_a_number_are_recorded_and_used_on_resume(tmp_path, mnist_dir):
    """--allow-few-samples lives in the run's config: resuming the run needs no flag and ends done."""
    args = (
        "--models",
        "gan",
        "--profile",
        "smoke",
        "--data-dir",
        mnist_dir,
        "--out",
        tmp_path,
        "--name",
        "few",
    )
    result = invoke(
        "run", *args, "--n-samples", "100", "--allow-few-samples", "--max-steps", "2", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "gan-smoke-s0-few"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["eval_config"]["allow_few_samples"] is True and config["eval_config"]["n_samples"] == 100
    result = invoke("run", "--resume", run_dir, "--reevaluate", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["fid_mnist"]["protocol"][
        "rank_deficient"
    ]


def test_unknown_model_is_a_usage_error_listing_choices():
    line = one_line_error(invoke("run", "--models", "vae,nosuchmodel", "--dry-run"), 2)
    assert "nosuchmodel" in line and "vae" in line and "pixelcnn" in line


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--profile", "huge"), "huge"),
        (("--epochs", "-1"), "--epochs"),
        (("--batch-size", "0"), "--batch-size"),
        (("--seeds", "0,x"), "integers"),
        (("--lr", "0"), "--lr"),
    ],
)
def test_bad_numbers_and_names_are_usage_errors(args, needle):
    line = one_line_error(invoke("run", "--models", "vae", "--dry-run", *args), 2)
    assert needle in line


def test_dry_run_prints_resolved_config_with_overrides():
    result = invoke(
        "run",
        "--models",
        "vae,flow,realnvp",
        "--seeds",
        "1,2",
        "--profile",
        "smoke",
        "--epochs",
        "3",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert [(p["model"], p["seed"]) for p in plans] == [("vae", 1), ("vae", 2), ("flow", 1), ("flow", 2)]
    assert all(p["train_config"]["epochs"] == 3 for p in plans)
    assert plans[0]["eval_config"]["iwae_k"] == 8


def test_missing_data_dir_is_a_runtime_error(tmp_path):
    line = one_line_error(
        invoke(
            "run",
            "--models",
            "vae",
            "--profile",
            "smoke",
            "--data-dir",
            tmp_path / "none",
            "--out",
            tmp_path / "r",
        ),
        1,
    )
    assert "does not exist" in line and "--data-dir" in line


def test_resume_refuses_conflicting_options(tmp_path):
    line = one_line_error(invoke("run", "--resume", tmp_path, "--models", "gan"), 2)
    assert "--models" in line


def test_resume_of_a_non_run_folder(tmp_path):
    assert "not a run folder" in one_line_error(invoke("run", "--resume", tmp_path), 1)


def test_list_shows_models_and_capabilities():
    result = invoke("list")
    assert result.exit_code == 0
    assert (
        "vae" in result.output
        and "likelihood=estimate" in result.output
        and "aliases=realnvp" in result.output
    )
